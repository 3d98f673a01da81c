"""The provider's side of a federation: the online phase for every owner that needs it, then
rounds of local training and secure aggregation, checkpointed after every completed round.

The server talks to owners through a :class:`Transport` (Flower's grid in
:mod:`blindfed.fl.app`, or :class:`LocalTransport` in one process): it asks a set of owners one
action at a time and gets the replies of those that answered in time; an owner that does not
answer is out of the round from that stage on, and secure aggregation sums the survivors.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from blindfed import secagg
from blindfed.atomic import write_atomically
from blindfed.fl.dispatch import Payload
from blindfed.fl.fedavg import (
    LocalTraining,
    Schedule,
    apply_sum,
    check_sum,
    get_vector,
    make_model,
    set_vector,
)
from blindfed.fl.secure_sum import majority
from blindfed.fl.server_opt import ServerOptimizer
from blindfed.fl.settings import DEFAULTS, FRAC_BITS, PRESETS, UPDATE_BOUND, milestones
from blindfed.fl.transport import Transport
from blindfed.nn.adapter import check_readout
from blindfed.protocol import Provider
from blindfed.protocol.messages import ForwardRequest, Offer, OwnerHello, decode

__all__ = ["FederationConfig", "FederationServer", "RoundFailedError"]

log = logging.getLogger("blindfed.fl")


class RoundFailedError(RuntimeError):
    """A round that cannot complete: too few owners answered a stage in time, or its secure
    sum was refused. The server retries it (a fresh secure aggregation, longer deadlines)
    before giving up."""


_PAPER = PRESETS["paper"]


@dataclass
class FederationConfig:
    """A federation's settings (defaults: the paper's schedule and plain FedAvg, the rest from
    :data:`~blindfed.fl.settings.DEFAULTS`; the run-config presets fill them in)."""

    rounds: int = DEFAULTS["rounds"]
    lr: float = _PAPER["lr"]
    milestones: tuple[int, ...] = milestones(_PAPER["milestones"])
    gamma: float = _PAPER["gamma"]
    #: the server's step on the secure sum (:mod:`blindfed.fl.server_opt`).
    server_optimizer: str = _PAPER["server-optimizer"]
    server_lr: float = _PAPER["server-lr"]
    server_momentum: float = _PAPER["server-momentum"]
    local: LocalTraining = field(default_factory=LocalTraining)
    rank: int = DEFAULTS["rank"]
    #: how the head reads the last block's features (:data:`blindfed.nn.adapter.READOUTS`).
    readout: str = _PAPER["readout"]
    #: whether each owner standardises the head's inputs by its own statistics
    #: (:meth:`blindfed.nn.adapter.AdaptedClassifier.standardise_by`).
    standardise: bool = _PAPER["standardise"]
    classes: int = 10
    min_owners: int = DEFAULTS["min-owners"]
    #: shares needed to unmask; None: a majority of the round's owners (at least 2).
    threshold: int | None = DEFAULTS["threshold"] or None
    #: SecAgg+ graph degree; None: every pair of owners (SecAgg).
    neighbours: int | None = DEFAULTS["neighbours"] or None
    #: the largest |n * delta| an owner may contribute per entry (fixed point refuses more).
    update_bound: float = UPDATE_BOUND
    frac_bits: int = FRAC_BITS
    #: seconds an owner has to answer a stage; attempt a of a retried round waits 2^a times it.
    timeout: float = DEFAULTS["timeout"]
    #: retries of a round that fails (too few owners in time, a refused sum) before the run
    #: stops; owners that left are waited for (``timeout``) before each retry.
    retries: int = DEFAULTS["retries"]
    eval_every: int = 1
    seed: int = DEFAULTS["seed"]

    def __post_init__(self) -> None:
        check_readout(self.readout)

    def make_server_optimizer(self) -> ServerOptimizer:
        return ServerOptimizer(
            self.server_optimizer, lr=self.server_lr, momentum=self.server_momentum
        )

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.lr, self.rounds, tuple(self.milestones), self.gamma)

    def owner_config(self, round: int) -> str:
        """What an owner needs to train a round, as JSON."""
        return json.dumps(
            {
                "lr": self.schedule.lr_at(round),
                "local": asdict(self.local),
                "rank": self.rank,
                "readout": self.readout,
                "standardise": self.standardise,
                "classes": self.classes,
            }
        )


class _SharedTransport:
    """A transport several owners' passes use at once: one message exchange at a time (a
    transport need not be thread-safe), while the cluster computes for all of them."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.lock = threading.Lock()

    def nodes(self) -> list[int]:
        with self.lock:
            return self.transport.nodes()

    def ask(self, action: str, requests: dict[int, Payload], timeout: float) -> dict[int, Payload]:
        with self.lock:
            return self.transport.ask(action, requests, timeout)


def _size(payload: Payload) -> int:
    return sum(
        len(v) if isinstance(v, bytes | str) else np.asarray(v).nbytes for v in payload.values()
    )


class FederationServer:
    """Runs a federation from ``state_dir`` (on the provider's machine), resuming after the
    last completed round if a checkpoint is there.

    Args:
        provider: the online-phase provider holding the student (loaded from a path on the
            provider's machine).
        config: the federation's settings.
        state_dir: checkpoints, history and (with ``audit``) every round's aggregate.
        audit: also keep every round's secure sum (for tests and audits; it is what the
            server learns anyway).
        progress: called with a line of progress (default: the ``blindfed.fl`` logger).
        on_round: called with each completed round's history entry (progress bars).
        on_online: called with :attr:`online` once the online phase is over (before round 1).
    """

    def __init__(
        self,
        provider: Provider,
        config: FederationConfig,
        state_dir: str | Path,
        *,
        audit: bool = False,
        progress: Callable[[str], None] | None = None,
        on_round: Callable[[dict[str, Any]], None] | None = None,
        on_online: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.provider = provider
        self.config = config
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.audit = audit
        self._say = progress or log.info
        self._on_round = on_round
        #: the online phase of this run: seconds, the evaluation-key bytes each owner sent and
        #: how many owners are ready for the rounds.
        self.online: dict[str, Any] = {"seconds": 0.0, "key_bytes": {}, "ready": 0}
        self._on_online = on_online
        self.optimizer = config.make_server_optimizer()
        self.history: list[dict[str, Any]] = []
        self.completed = 0
        self._load()

    # ---- checkpoints ----------------------------------------------------------------------

    def _load(self) -> None:
        """A fresh model drawn under the seed, then the checkpoint's weights if there is one."""
        import torch

        path = self.state_dir / "checkpoint.json"
        fresh = not path.exists()
        if fresh:
            torch.manual_seed(self.config.seed)
        c, blocks, width = self.config, len(self.provider.blocks), self.provider.width
        self.model = make_model(blocks, width, c.classes, c.rank, c.readout)
        if fresh:
            return
        state = json.loads(path.read_text())
        with np.load(self.state_dir / state["weights"]) as z:
            set_vector(self.model, z["vector"])
            self.model.seen_blocks.copy_(torch.as_tensor(z["seen"]))
            self.optimizer.load(z)
        self.completed, self.history = state["round"], state["history"]
        self._say(f"resuming after round {self.completed}")

    def _save(self) -> None:
        import io

        name = f"weights-{self.completed}.npz"
        buf = io.BytesIO()
        np.savez(
            buf,
            vector=get_vector(self.model),
            seen=self.model.seen_blocks.numpy(),
            **self.optimizer.state(),
        )
        write_atomically(self.state_dir / name, buf.getvalue())
        state = {"round": self.completed, "weights": name, "history": self.history}
        write_atomically(self.state_dir / "checkpoint.json", json.dumps(state, indent=1).encode())
        for old in self.state_dir.glob("weights-*.npz"):
            if old.name != name:
                old.unlink()

    # ---- the online phase -----------------------------------------------------------------

    def online_phase(self, transport: Transport, nodes: list[int]) -> list[int]:
        """Brings every owner's block outputs up to date; returns the owners that are ready.

        In process, owners are served one after another, each from its key exchange to its
        last block: the provider holds one owner's evaluation keys (137 MB at the default) and
        one request at a time however many owners there are, and drops the keys when that
        owner's passes are done. Nothing is lost by the order: the provider evaluates one
        request at a time anyway (on every core), and an owner's own work between two
        requests (decrypting, re-encrypting) takes seconds against the minutes of its blocks.
        A provider on a cluster serves as many owners at once as it has evaluators
        (:attr:`~blindfed.protocol.Provider.concurrency`), one request each; their messages
        share the transport one at a time.
        """
        timeout = self.config.timeout
        status = transport.ask("status", {n: {} for n in nodes}, timeout)
        ready = [n for n in nodes if n in status and status[n]["ready"]]
        need = [n for n in nodes if n in status and not status[n]["ready"]]
        started = time.perf_counter()
        workers = min(self.provider.concurrency, len(need))
        if workers > 1:
            shared = _SharedTransport(transport)
            self._say(f"online phase: {len(need)} owners, {workers} at a time")
            with ThreadPoolExecutor(workers, thread_name_prefix="blindfed-owner") as pool:
                done = list(pool.map(lambda n: self._passes(shared, n), need))
            ready += [n for n, ok in zip(need, done, strict=True) if ok]
        else:
            for k, n in enumerate(need):
                self._say(f"online phase: owner {n} ({k + 1} of {len(need)})")
                if self._passes(transport, n):
                    ready.append(n)
        if need:
            self.online["seconds"] = time.perf_counter() - started
        return sorted(ready)

    def _passes(self, transport: Transport, node: int) -> bool:
        """One owner's key exchange and passes, in a session of its own; whether it is ready."""
        offer = self.provider.offer()
        session = decode(offer, Offer).session
        try:
            return self._serve(transport, node, offer, session)
        finally:
            self.provider.close(session)  # its keys go with it

    def _serve(self, transport: Transport, node: int, offer: bytes, session: str) -> bool:
        timeout = self.config.timeout
        reply = transport.ask("hello", {node: {"offer": offer}}, timeout).get(node)
        if reply is None:
            log.warning("owner %s did not answer the key exchange", node)
            return False
        what = "hello"
        try:
            hello = reply.pop("hello")
            if decode(hello, OwnerHello).session != session:
                raise ValueError("the hello answers another session")
            self.provider.register(hello)
            self.online["key_bytes"][node] = len(hello)
            del hello  # the keys live on in the provider's session only
            what, forwarded, served = "forward request", b"", 0
            started = time.perf_counter()
            while True:
                replies = transport.ask("pass", {node: {"reply": forwarded}}, timeout)
                if node not in replies:
                    log.warning("owner %s left during the online phase", node)
                    return False
                request = replies.pop(node)["request"]
                if not request:
                    return True
                # The session is bound to the owner that opened it (its authenticated node).
                if decode(request, ForwardRequest).session != session:
                    raise ValueError("the request names another session")
                forwarded = self.provider.forward(request, self._refresher(transport, node))
                served += 1
                elapsed = time.perf_counter() - started
                self._say(f"online phase: owner {node}, {served} requests served ({elapsed:.0f} s)")
        except Exception as e:  # one owner's bad bytes never stop the others
            self._refuse(transport, node, what, e)
            return False

    def _refuse(self, transport: Transport, node: int, what: str, error: Exception) -> None:
        """Leaves ``node`` out of the online phase and tells it why (its ``refused`` action);
        the other owners' passes go on."""
        reason = f"the provider refused its {what}: {type(error).__name__}: {error}"
        log.warning("owner %s left out of the online phase: %s", node, reason)
        transport.ask("refused", {node: {"reason": reason}}, self.config.timeout)

    def _refresher(self, transport: Transport, node: int) -> Callable[[bytes], bytes]:
        def refresh(request: bytes) -> bytes:
            reply = transport.ask("refresh", {node: {"request": request}}, self.config.timeout)
            if node not in reply:
                raise KeyError(f"owner {node} did not answer a refresh")
            return reply[node]["reply"]

        return refresh

    # ---- rounds ---------------------------------------------------------------------------

    def run(self, transport: Transport) -> list[dict[str, Any]]:
        """The online phase, then the remaining rounds; returns the history (one dict a round)."""
        nodes = self._connected(transport, strict=True)
        ready = self.online_phase(transport, nodes)
        self.online["ready"] = len(ready)
        if self._on_online is not None:
            self._on_online(self.online)
        for r in range(self.completed + 1, self.config.rounds + 1):
            self.history.append(self._round_with_retries(transport, r, ready))
            self.completed = r
            self._save()
            if self._on_round is not None:
                self._on_round(self.history[-1])
        return self.history

    def _round_with_retries(self, transport: Transport, r: int, ready: list[int]) -> dict:
        cfg = self.config
        first: list[int] | None = None
        for attempt in range(cfg.retries + 1):
            alive = sorted(set(ready) & set(transport.nodes()))
            first = alive if first is None else first
            try:
                entry = self.round(transport, r, alive, attempt=attempt)
                # Dropped: the round's owners (at its first attempt) that are not in the sum.
                dropped = sorted(set(first) - set(entry["survivors"]))
                return {**entry, "dropped": dropped, "attempts": attempt + 1}
            except RoundFailedError as e:
                if attempt == cfg.retries:
                    raise
                self._say(f"{e}; retrying (attempt {attempt + 2} of {cfg.retries + 1})")
                self._connected(transport, ready)
        raise AssertionError("unreachable")

    def _connected(
        self, transport: Transport, among: list[int] | None = None, *, strict: bool = False
    ) -> list[int]:
        """The connected owners (those of ``among`` if given), after waiting up to ``timeout``
        for at least ``min_owners`` (and 2) of them; ``strict``: too few is a TimeoutError."""
        need = max(self.config.min_owners, 2)
        deadline = time.monotonic() + self.config.timeout
        while True:
            connected = set(transport.nodes())
            nodes = sorted(connected if among is None else connected & set(among))
            if len(nodes) >= need:
                return nodes
            if time.monotonic() > deadline:
                if strict:
                    raise TimeoutError(f"{len(nodes)} owners connected, {need} needed")
                return nodes
            time.sleep(1.0)

    def round(
        self, transport: Transport, r: int, owners: list[int], *, attempt: int = 0
    ) -> dict[str, Any]:
        """One round of local training and secure aggregation over ``owners``; raises
        :class:`RoundFailedError` when it cannot complete. Owners that do not answer a stage within
        the deadline (``timeout``, doubled at every retry) are left out of the round from that
        stage on, while at least the threshold remain."""
        cfg = self.config
        if len(owners) < max(cfg.min_owners, 2):
            raise RoundFailedError(f"round {r}: {len(owners)} owners, {cfg.min_owners} needed")
        t0 = time.perf_counter()
        timeout = cfg.timeout * 2**attempt
        vector = get_vector(self.model)
        length = len(vector) + self.model.blocks + 1
        threshold = cfg.threshold or majority(len(owners))
        params = secagg.Params(
            owners,
            threshold,
            length,
            cfg.update_bound,
            frac_bits=cfg.frac_bits,
            neighbours=cfg.neighbours,
            context=f"blindfed:{secrets.token_hex(8)}:{r}:{attempt}".encode(),
        )
        agg = secagg.Server(params)
        traffic = {n: 0 for n in owners}

        def ask(action: str, requests: dict[int, Payload]) -> dict[int, Payload]:
            for q in requests.values():
                q.update(round=r, attempt=attempt)
            replies = transport.ask(action, requests, timeout)
            for n, q in requests.items():
                traffic[n] += _size(q) + (_size(replies[n]) if n in replies else 0)
            missing = sorted(set(requests) - set(replies))
            if missing:
                self._say(
                    f"round {r}: no {action} answer from owners {missing} within {timeout:.0f} s"
                    f"; {len(replies)} go on ({threshold} needed)"
                )
            if len(replies) < threshold:
                raise RoundFailedError(
                    f"round {r}: {len(replies)} of {len(requests)} owners answered {action} "
                    f"within {timeout:.0f} s, {threshold} needed"
                )
            return replies

        try:
            fit = ask(
                "fit",
                {
                    n: {"model": vector, "config": cfg.owner_config(r), "params": params.to_bytes()}
                    for n in owners
                },
            )
            roster = agg.roster({n: v["advert"] for n, v in fit.items()})
            shared = ask("share", {n: {"roster": roster} for n in fit})
            inboxes = agg.route({n: v["bundle"] for n, v in shared.items()})
            masked = ask("mask", {n: {"inbox": box} for n, box in inboxes.items()})
            request = agg.collect({n: v["masked"] for n, v in masked.items()})
            answers = ask("unmask", {n: {"request": request} for n in agg.survivors})
            total = agg.aggregate({n: v["answer"] for n, v in answers.items()})
            check_sum(total, len(agg.survivors), self.model.blocks, cfg.update_bound)
        except ValueError as e:  # the core's SecAgg errors and a refused sum
            raise RoundFailedError(f"round {r}: {e}") from e
        samples = apply_sum(self.model, total, self.optimizer)
        if self.audit:
            (self.state_dir / "audit").mkdir(exist_ok=True)
            np.save(self.state_dir / "audit" / f"round_{r}.npy", total)
        entry: dict[str, Any] = {
            "round": r,
            "lr": cfg.schedule.lr_at(r),
            "owners": owners,
            "survivors": list(agg.survivors),
            "dropped": sorted(set(owners) - set(agg.survivors)),
            "samples": samples,
            "seconds": round(time.perf_counter() - t0, 2),
            "bytes_per_owner": traffic,
        }
        if cfg.eval_every and (r % cfg.eval_every == 0 or r == cfg.rounds):
            entry.update(self.evaluate(transport, sorted(set(owners) & set(transport.nodes()))))
        self._say(
            f"round {r}: {len(agg.survivors)}/{len(owners)} owners in the sum"
            + (f", accuracy {entry['accuracy']:.1f} %" if "accuracy" in entry else "")
        )
        return entry

    def evaluate(self, transport: Transport, owners: list[int]) -> dict[str, Any]:
        """Accuracy of the global model over the owners' test data (each owner scores its own
        and reports counts)."""
        vector = get_vector(self.model)
        config = self.config.owner_config(max(self.completed, 1))
        replies = transport.ask(
            "evaluate",
            {n: {"model": vector, "config": config} for n in owners},
            self.config.timeout,
        )
        correct = sum(int(v["correct"]) for v in replies.values())
        total = sum(int(v["total"]) for v in replies.values())
        return {
            "accuracy": 100.0 * correct / total if total else float("nan"),
            "test_samples": total,
        }
