"""The actions an owner answers, by name: one table that every transport (Flower's ClientApp,
the in-process transport of tests and studies) calls into.

A request and its reply are flat dicts of bytes, float64 arrays, ints, floats and strings,
so any transport can carry them as they are (Flower: one record per message).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from blindfed.fl.owner_node import OwnerNode

__all__ = ["ACTIONS", "answer"]

Payload = dict[str, Any]


def _status(node: OwnerNode, me: int, req: Payload) -> Payload:
    return {"ready": int(node.ready()), "train_samples": len(node.data.train_labels)}


def _hello(node: OwnerNode, me: int, req: Payload) -> Payload:
    return {"hello": node.hello(req["offer"])}


def _pass(node: OwnerNode, me: int, req: Payload) -> Payload:
    return {"request": node.pass_step(req.get("reply") or None) or b""}


def _refresh(node: OwnerNode, me: int, req: Payload) -> Payload:
    return {"reply": node.refresh(req["request"])}


def _refused(node: OwnerNode, me: int, req: Payload) -> Payload:
    node.refused(str(req["reason"]))
    return {}


def _fit(node: OwnerNode, me: int, req: Payload) -> Payload:
    config = json.loads(req["config"])
    advert = node.fit(
        int(req["round"]),
        me,
        np.asarray(req["model"]),
        config,
        req["params"],
        attempt=_attempt(req),
    )
    return {"advert": advert}


def _attempt(req: Payload) -> int:
    return int(req.get("attempt", 0))


def _share(node: OwnerNode, me: int, req: Payload) -> Payload:
    return {"bundle": node.share(int(req["round"]), req["roster"], attempt=_attempt(req))}


def _mask(node: OwnerNode, me: int, req: Payload) -> Payload:
    return {"masked": node.mask(int(req["round"]), req["inbox"], attempt=_attempt(req))}


def _unmask(node: OwnerNode, me: int, req: Payload) -> Payload:
    return {"answer": node.unmask(int(req["round"]), req["request"], attempt=_attempt(req))}


def _evaluate(node: OwnerNode, me: int, req: Payload) -> Payload:
    correct, total = node.evaluate(np.asarray(req["model"]), json.loads(req["config"]))
    return {"correct": correct, "total": total}


#: action -> handler(node, my node id, request) -> reply.
ACTIONS: dict[str, Callable[[OwnerNode, int, Payload], Payload]] = {
    "status": _status,
    "hello": _hello,
    "pass": _pass,
    "refresh": _refresh,
    "refused": _refused,
    "fit": _fit,
    "share": _share,
    "mask": _mask,
    "unmask": _unmask,
    "evaluate": _evaluate,
}


def answer(node: OwnerNode, me: int, action: str, request: Payload) -> Payload:
    """The owner's reply to one request; unknown actions are a ValueError."""
    try:
        handler = ACTIONS[action]
    except KeyError:
        raise ValueError(f"unknown action {action!r}; expected one of {sorted(ACTIONS)}") from None
    return handler(node, me, request)
