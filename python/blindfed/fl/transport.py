"""How the provider's federation server reaches its owners.

A :class:`Transport` sends each owner a request and returns the replies that came back in
time. The Flower ServerApp's is :class:`~blindfed.fl.app.GridTransport`; :class:`LocalTransport`
holds the owners in this process (tests, studies, the demo's ``--runtime local``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from blindfed.fl.dispatch import Payload, answer
from blindfed.fl.owner_node import OwnerNode

__all__ = ["LocalTransport", "Transport"]

log = logging.getLogger("blindfed.fl")


class Transport(Protocol):
    def nodes(self) -> list[int]:
        """The owners connected now."""
        ...

    def ask(self, action: str, requests: dict[int, Payload], timeout: float) -> dict[int, Payload]:
        """Sends each owner its request; returns the replies that came back in time (an owner
        that failed or timed out is absent)."""
        ...


class LocalTransport:
    """Owners in this process (tests, studies, the demo's default): ``fail(action, node,
    round)`` returning True makes that owner drop out at that point, as a crash would;
    ``fresh`` rebuilds each owner from its directory for every message, as Flower's
    per-message processes do."""

    def __init__(
        self,
        owners: dict[int, OwnerNode],
        fail: Callable[[str, int, int | None], bool] | None = None,
        *,
        fresh: bool = False,
    ) -> None:
        self.owners = owners
        self.fail = fail or (lambda action, node, round: False)
        self.fresh = fresh
        self.down: set[int] = set()
        self.asked: list[str] = []

    def nodes(self) -> list[int]:
        return sorted(set(self.owners) - self.down)

    def ask(self, action: str, requests: dict[int, Payload], timeout: float) -> dict[int, Payload]:
        replies = {}
        for n, request in requests.items():
            if n in self.down or n not in self.owners:
                continue
            if self.fail(action, n, request.get("round")):
                self.down.add(n)
                continue
            node = self.owners[n]
            if self.fresh:
                node = node.reopened()
            try:
                replies[n] = answer(node, n, action, request)
            except Exception as e:  # as over Flower: a failed owner is absent from the replies
                log.warning("owner %s failed %s: %s: %s", n, action, type(e).__name__, e)
        self.asked.append(action)
        return replies
