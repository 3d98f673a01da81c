"""A federation's two roles from its settings, over any transport (no Flower import here).

:func:`provide` is the provider's whole run (the Flower ServerApp calls it with the grid's
transport); :func:`owner_node` builds an owner from its node config (the Flower ClientApp calls
it for every message); :func:`run_local` runs both in this process over
:class:`~blindfed.fl.transport.LocalTransport`, for machines without Flower and for studies.

Settings are Flower run-config keys (:data:`~blindfed.fl.settings.DEFAULTS`, with the presets
and :func:`~blindfed.fl.settings.merge_settings` re-exported here); ``hooks`` are what a run in this
process may add and a run config cannot carry: ``student`` (an already loaded student),
``on_block`` (the provider's per-block events), ``on_stage`` (the stages within a block, see
:class:`~blindfed.protocol.Provider`), ``on_online`` (the online phase's figures, once it is
over), ``on_round`` (each round's history entry), ``progress`` (lines of progress).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from blindfed.fl.settings import DEFAULTS, PRESETS, merge_settings, milestones

__all__ = [
    "DEFAULTS",
    "PRESETS",
    "federation_config",
    "merge_settings",
    "milestones",
    "owner_node",
    "provide",
    "ray_cluster",
    "run_local",
]

_HOOKS = {"student", "on_block", "on_stage", "on_online", "on_round", "progress"}


def _check_hooks(hooks: Mapping[str, Any] | None) -> dict[str, Any]:
    unknown = set(hooks or {}) - _HOOKS
    if unknown:
        raise ValueError(f"unknown hooks {sorted(unknown)}; known: {sorted(_HOOKS)}")
    return dict(hooks or {})


def federation_config(s: Mapping[str, Any]) -> Any:
    """The :class:`~blindfed.fl.server.FederationConfig` of merged run-config settings."""
    from blindfed.fl.fedavg import LocalTraining
    from blindfed.fl.server import FederationConfig

    return FederationConfig(
        rounds=int(s["rounds"]),
        lr=float(s["lr"]),
        milestones=milestones(s["milestones"]),
        gamma=float(s["gamma"]),
        server_optimizer=str(s["server-optimizer"]),
        server_lr=float(s["server-lr"]),
        server_momentum=float(s["server-momentum"]),
        local=LocalTraining(
            epochs=int(s["local-epochs"]),
            batch_size=int(s["batch-size"]),
            momentum=float(s["momentum"]),
        ),
        rank=int(s["rank"]),
        readout=str(s["readout"]),
        standardise=bool(s["standardise"]),
        min_owners=int(s["min-owners"]),
        threshold=int(s["threshold"]) or None,
        neighbours=int(s["neighbours"]) or None,
        timeout=float(s["timeout"]),
        retries=int(s["retries"]),
        seed=int(s["seed"]),
    )


def _server(s: Mapping[str, Any], hooks: dict[str, Any]) -> Any:
    """The provider (its student from ``hooks`` or from a path on its own machine) and its
    federation."""
    from blindfed import zoo
    from blindfed.fl.server import FederationServer
    from blindfed.nn.student import Student
    from blindfed.protocol import Provider

    student = hooks.get("student")
    if student is None:
        # The provider's own weights: a path on this machine, or the package's own student.
        student = Student.load(s["student"]).eval() if s["student"] else zoo.load_student()
    provider = Provider(
        student,
        mode=s["mode"],
        privacy=bool(s["privacy"]),
        on_block=hooks.get("on_block"),
        on_stage=hooks.get("on_stage"),
        cluster=ray_cluster(s["ray-address"]),
    )
    return FederationServer(
        provider,
        federation_config(s),
        s["state-dir"],
        audit=bool(s["audit"]),
        progress=hooks.get("progress"),
        on_round=hooks.get("on_round"),
        on_online=hooks.get("on_online"),
    )


def ray_cluster(address: str) -> Any:
    """The run config's ``ray-address`` as a :class:`~blindfed.protocol.cluster.RayCluster`
    (None for "": the provider's own process)."""
    if not address:
        return None
    from blindfed.protocol.cluster import RayCluster

    return RayCluster(None if address == "local" else address)


def _online_figures(server: Any) -> dict[str, Any]:
    keys = server.online["key_bytes"]
    return {
        "seconds": server.online["seconds"],
        "key_bytes_per_owner": max(keys.values()) if keys else 0,
        "ready": server.online["ready"],
    }


def provide(s: Mapping[str, Any], transport: Any, hooks: Mapping[str, Any] | None = None) -> dict:
    """The provider's run: the online phase, then the rounds; writes and returns
    ``results.json`` (mode, settings, history, online-phase figures) in ``state-dir``."""
    server = _server(s, _check_hooks(hooks))
    try:
        history = server.run(transport)
    finally:
        if server.provider.cluster is not None:
            server.provider.cluster.shutdown()
    result = {
        "mode": s["mode"],
        "settings": dict(s),
        "history": history,
        "online": _online_figures(server),
    }
    Path(s["state-dir"], "results.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def owner_node(s: Mapping[str, Any], node: Mapping[str, Any], node_id: int) -> Any:
    """An owner from its node config: ``owner-dir`` (default ``work-dir/owner-<partition>``)
    and ``data`` (an ``.npz``), or ``partition-id`` / ``num-partitions`` of the embedded
    default (drawn once, then kept in ``owner-dir/data.npz``)."""
    from blindfed.fl.owner_data import OwnerData
    from blindfed.fl.owner_node import OwnerNode

    directory = Path(
        node.get("owner-dir") or Path(s["work-dir"], f"owner-{node.get('partition-id', node_id)}")
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
    return OwnerNode(directory, data, name=str(node_id))


def _local_owners(s: Mapping[str, Any], owners: int) -> dict[int, Any]:
    return {
        k + 1: owner_node(s, {"partition-id": k, "num-partitions": owners}, k + 1)
        for k in range(owners)
    }


def run_local(
    overrides: Mapping[str, Any] | None,
    owners: int,
    *,
    hooks: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole federation in this process: ``owners`` owners of the embedded default
    (partitions 0..owners-1 under ``work-dir``), the provider over an in-process transport."""
    from blindfed.fl.transport import LocalTransport

    s = merge_settings({}, overrides)
    return provide(s, LocalTransport(_local_owners(s, owners)), hooks)
