"""Flower apps (Message API): a ServerApp at the provider, a ClientApp at each owner.

Every step of the protocol is a Flower message from the ServerApp to an owner's ClientApp:
``query.status``, ``query.hello`` (the CKKS key exchange), ``query.pass`` and
``query.refresh`` (the block-wise encrypted passes), ``train.fit`` (local training and the
first secure-aggregation message), ``query.share``, ``query.mask``, ``query.unmask`` (the rest
of SecAgg+) and ``evaluate``. Ciphertexts and other bytes travel as uint8 arrays in an
``ArrayRecord`` (which Flower chunks), scalars in a ``ConfigRecord``.

Settings come from the run config (``flwr run ... --run-config``; keys below) or, for
:func:`make_apps`, from a dict. The provider's weights load from ``student`` (a path on the
provider's machine; empty: the student shipped with the package), never from the app bundle
that every node receives. Owners find their directory and data through the node config
(``owner-dir``, ``data``: an ``.npz``, see :class:`~blindfed.fl.owner_data.OwnerData``) or,
in simulations of the embedded default, ``partition-id`` / ``num-partitions``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from blindfed.fl.dispatch import ACTIONS, Payload, answer
from blindfed.fl.run import DEFAULTS, merge_settings, owner_node, provide

__all__ = ["DEFAULTS", "client_app", "make_apps", "server_app"]

log = logging.getLogger("blindfed.fl")

_TYPES = {"fit": "train.fit", "evaluate": "evaluate"}


def _message_type(action: str) -> str:
    return _TYPES.get(action, f"query.{action}")


def _to_record(payload: Payload) -> RecordDict:
    arrays, scalars = ArrayRecord(), ConfigRecord()
    for key, value in payload.items():
        if isinstance(value, bytes):
            arrays[key] = Array(np.frombuffer(value, dtype=np.uint8).copy())
            scalars[f"{key}:bytes"] = True
        elif isinstance(value, np.ndarray):
            arrays[key] = Array(np.ascontiguousarray(value))
        else:
            scalars[key] = value
    return RecordDict({"arrays": arrays, "scalars": scalars})


def _from_record(content: RecordDict) -> Payload:
    arrays, scalars = content["arrays"], content["scalars"]
    out: Payload = {k: v for k, v in scalars.items() if not k.endswith(":bytes")}
    for key, array in arrays.items():
        value = array.numpy()
        out[key] = value.tobytes() if scalars.get(f"{key}:bytes") else value
    return out


# ---- the provider ---------------------------------------------------------------------------


class GridTransport:
    """The server's :class:`~blindfed.fl.transport.Transport` over a Flower grid. While a stage
    waits, it says every ``report_every`` seconds which owners it is still waiting for."""

    def __init__(self, grid: Grid, *, report_every: float = 30.0, poll: float = 0.1) -> None:
        self.grid = grid
        self.rounds = 0
        self.report_every = report_every
        self.poll = poll

    def nodes(self) -> list[int]:
        return sorted(self.grid.get_node_ids())

    def ask(self, action: str, requests: dict[int, Payload], timeout: float) -> dict[int, Payload]:
        messages = [
            Message(
                _to_record(q),
                dst_node_id=n,
                message_type=_message_type(action),
                group_id=str(q.get("round", 0)),
            )
            for n, q in requests.items()
        ]
        ids = list(self.grid.push_messages(messages))
        waiting = dict(zip(ids, requests, strict=True))
        start = time.monotonic()
        reported = start
        replies: dict[int, Payload] = {}
        while waiting and time.monotonic() - start < timeout:
            for reply in self.grid.pull_messages(list(waiting)):
                node = waiting.pop(reply.metadata.reply_to_message_id, None)
                if node is None:
                    continue
                if reply.has_error():
                    log.warning("owner %s failed %s: %s", node, action, reply.error.reason)
                    continue
                replies[node] = _from_record(reply.content)
            now = time.monotonic()
            if waiting and now - reported >= self.report_every:
                reported = now
                log.info(
                    "%s: waiting for owners %s (%.0f of %.0f s)",
                    action,
                    sorted(waiting.values()),
                    now - start,
                    timeout,
                )
            if waiting:
                time.sleep(self.poll)
        return replies


def _provider_main(grid: Grid, context: Context, overrides: Any, hooks: Any) -> None:
    provide(merge_settings(context.run_config, overrides), GridTransport(grid), hooks)


# ---- an owner -------------------------------------------------------------------------------


def _owner_handler(action: str, overrides: dict[str, Any] | None):
    def handle(message: Message, context: Context) -> Message:
        s = merge_settings(context.run_config, overrides)
        node = owner_node(s, context.node_config, context.node_id)
        reply = answer(node, context.node_id, action, _from_record(message.content))
        return Message(_to_record(reply), reply_to=message)

    return handle


def _register(
    server: ServerApp,
    client: ClientApp,
    overrides: dict[str, Any] | None,
    hooks: dict[str, Any] | None,
) -> None:
    @server.main()
    def main(grid: Grid, context: Context) -> None:
        _provider_main(grid, context, overrides, hooks)

    for action in ACTIONS:
        category, _, name = _message_type(action).partition(".")
        getattr(client, category)(name or "default")(_owner_handler(action, overrides))


def make_apps(
    settings: dict[str, Any] | None = None, *, hooks: dict[str, Any] | None = None
) -> tuple[ServerApp, ClientApp]:
    """A ServerApp and a ClientApp with ``settings`` (run-config keys) fixed in, for
    ``flwr.simulation.run_simulation`` (which passes no run config) and tests. ``hooks``
    (see :mod:`blindfed.fl.run`) reach the provider when the ServerApp runs in this process,
    as it does in the simulation runtime."""
    server, client = ServerApp(), ClientApp()
    _register(server, client, settings, hooks)
    return server, client


# The apps ``flwr run`` loads (settings from the run config); Flower looks for these two
# plain assignments.
server_app = ServerApp()
client_app = ClientApp()
_register(server_app, client_app, None, None)
