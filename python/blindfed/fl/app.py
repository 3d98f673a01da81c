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

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from blindfed.fl.dispatch import ACTIONS, Payload, answer

__all__ = ["DEFAULTS", "client_app", "make_apps", "server_app"]

log = logging.getLogger("blindfed.fl")

#: Run-config keys and their defaults.
DEFAULTS: dict[str, Any] = {
    "rounds": 50,
    "lr": 1e-3,
    "local-epochs": 5,
    "batch-size": 32,
    "momentum": 0.9,
    "rank": 8,
    "min-owners": 2,
    "threshold": 0,  # 0: a majority of each round's owners
    "neighbours": 0,  # 0: every pair (SecAgg); k: SecAgg+ over a k-regular graph
    "timeout": 600.0,
    "mode": "simulate",
    "privacy": True,
    "student": "",
    "state-dir": "blindfed-federation",
    "work-dir": "blindfed-owners",
    "alpha": 1.0,
    "seed": 0,
    "train-samples": 0,
    "test-samples": 0,
    "audit": False,
}

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


def _settings(context: Context, overrides: dict[str, Any] | None) -> dict[str, Any]:
    unknown = set(overrides or {}) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    return {**DEFAULTS, **dict(context.run_config), **(overrides or {})}


# ---- the provider ---------------------------------------------------------------------------


class GridTransport:
    """The server's :class:`~blindfed.fl.server.Transport` over a Flower grid."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.rounds = 0

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
        replies: dict[int, Payload] = {}
        for reply in self.grid.send_and_receive(messages, timeout=timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                log.warning("owner %s failed %s: %s", node, action, reply.error.reason)
                continue
            replies[node] = _from_record(reply.content)
        return replies


def _provider_main(grid: Grid, context: Context, overrides: dict[str, Any] | None) -> None:
    from blindfed import zoo
    from blindfed.fl.fedavg import LocalTraining
    from blindfed.fl.server import FederationConfig, FederationServer
    from blindfed.nn.student import Student
    from blindfed.protocol import Provider

    s = _settings(context, overrides)
    # LSP-local weights: a path on this machine, or the package's own student.
    student = Student.load(s["student"]).eval() if s["student"] else zoo.load_student()
    provider = Provider(student, mode=s["mode"], privacy=bool(s["privacy"]))
    config = FederationConfig(
        rounds=int(s["rounds"]),
        lr=float(s["lr"]),
        local=LocalTraining(
            epochs=int(s["local-epochs"]),
            batch_size=int(s["batch-size"]),
            momentum=float(s["momentum"]),
        ),
        rank=int(s["rank"]),
        min_owners=int(s["min-owners"]),
        threshold=int(s["threshold"]) or None,
        neighbours=int(s["neighbours"]) or None,
        timeout=float(s["timeout"]),
        seed=int(s["seed"]),
    )
    server = FederationServer(provider, config, s["state-dir"], audit=bool(s["audit"]))
    history = server.run(GridTransport(grid))
    result = {"mode": s["mode"], "settings": s, "history": history}
    Path(s["state-dir"], "results.json").write_text(json.dumps(result, indent=1, default=str))


# ---- an owner -------------------------------------------------------------------------------


def _owner_node(context: Context, overrides: dict[str, Any] | None) -> Any:
    from blindfed.fl.owner_data import OwnerData
    from blindfed.fl.owner_node import OwnerNode

    s = _settings(context, overrides)
    node = dict(context.node_config)
    directory = Path(
        node.get("owner-dir")
        or Path(s["work-dir"], f"owner-{node.get('partition-id', context.node_id)}")
    )
    prepared = directory / "data.npz"
    if "data" in node:
        data = OwnerData.load(str(node["data"]))
    elif prepared.exists():
        # Drawn once: later messages (each in a new process) skip the draw and its imports.
        data = OwnerData.load(prepared)
    elif "partition-id" in node:
        data = OwnerData.digits_share(
            int(node["partition-id"]),
            int(node["num-partitions"]),
            alpha=float(s["alpha"]),
            seed=int(s["seed"]),
            train_samples=int(s["train-samples"]) or None,
            test_samples=int(s["test-samples"]) or None,
        )
        data.save(prepared)
    else:
        raise ValueError("the node config needs 'data' (an .npz) or 'partition-id'")
    return OwnerNode(directory, data, name=str(context.node_id))


def _owner_handler(action: str, overrides: dict[str, Any] | None):
    def handle(message: Message, context: Context) -> Message:
        node = _owner_node(context, overrides)
        reply = answer(node, context.node_id, action, _from_record(message.content))
        return Message(_to_record(reply), reply_to=message)

    return handle


def _register(server: ServerApp, client: ClientApp, settings: dict[str, Any] | None) -> None:
    @server.main()
    def main(grid: Grid, context: Context) -> None:
        _provider_main(grid, context, settings)

    for action in ACTIONS:
        category, _, name = _message_type(action).partition(".")
        getattr(client, category)(name or "default")(_owner_handler(action, settings))


def make_apps(settings: dict[str, Any] | None = None) -> tuple[ServerApp, ClientApp]:
    """A ServerApp and a ClientApp with ``settings`` (run-config keys) fixed in, for
    ``flwr.simulation.run_simulation`` (which passes no run config) and tests."""
    server, client = ServerApp(), ClientApp()
    _register(server, client, settings)
    return server, client


# The apps ``flwr run`` loads (settings from the run config); Flower looks for these two
# plain assignments.
server_app = ServerApp()
client_app = ClientApp()
_register(server_app, client_app, None)
