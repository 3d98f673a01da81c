"""The provider's encrypted compute spread over a Ray cluster.

Every request splits into parts, one per ciphertext group, and nothing mixes the groups: each
part goes through the same blocks, with the same hidden blocks and its own slice of the
request's permutation, on an *evaluator*, a Ray actor holding the student's blocks. The
provider's process (the driver) keeps every decision and every conversation with owners:

- it draws the hidden blocks and the permutation from its CSPRNG before any part runs
  (:class:`~blindfed.protocol.evaluation.PassPlan`), so a request gives the same permutations
  and revealed blocks on a cluster as in process, and joins the parts' sanitised outputs into
  the same reply bytes;
- it puts each owner's evaluation keys in Ray's object store once per session; an evaluator
  deserialises them the first time it serves that session and keeps them while the session
  lasts (a few sessions at most), so with one evaluator per node, the default, a node holds
  each owner's keys once;
- masked refreshes come back to it through a mailbox actor on its own node and go to the owner
  through the provider's transport, as in process. A refresh's masks, the sanitiser's fresh
  encryption of zero and its flooding noise are drawn where the part runs, by the Rust core's
  CSPRNG; what crosses between nodes is evaluation keys, ciphertexts and masked ciphertexts,
  never a secret key or a mask.

A part whose evaluator dies (its process killed, its node lost) runs again on another: the
owner sees a delay, and answers the new attempt's refreshes again (stateless on its side);
refreshes an abandoned attempt still asks are refused. Ray restarts dead evaluators.

Ray comes with Flower's simulation extra: ``pip install 'blindfed[flower]'`` (Python 3.11 or
later). Usage: ``Provider(student, cluster=RayCluster())`` starts (or joins, with
``RAY_ADDRESS``) a Ray instance; ``RayCluster("auto")`` joins the cluster ``ray start`` runs on
this machine. See docs/cluster.md for running one beside a SuperLink and the throughput model.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import threading
import time
from collections.abc import Sequence
from typing import Any

from blindfed import ckks
from blindfed.block import PackedBatch
from blindfed.protocol.evaluation import (
    BlockProgress,
    BlockRefresh,
    PassPlan,
    evaluate_pass,
    load_simulated,
)

__all__ = ["ClusterError", "RayCluster"]

log = logging.getLogger("blindfed.protocol")

#: Sessions whose keys one evaluator keeps deserialised (the least recently used goes first);
#: a closed session's keys go at once.
SESSIONS_PER_EVALUATOR = 2
#: Seconds the evaluators have to start (import torch, build the blocks) before the cluster is
#: declared unusable: generous, so that a busy machine is not mistaken for a broken one.
START_TIMEOUT = 600.0
#: Runs of the mailbox it remembers as closed, to refuse their late refreshes at once.
CLOSED_RUNS_REMEMBERED = 4096

#: One part of a request: its plan, its input and its owner-normalised input (or b"").
Part = tuple[PassPlan, bytes, bytes]
#: What a part gives back: its sanitised payload and the seconds each block took.
PartResult = tuple[bytes, list[float]]


class ClusterError(RuntimeError):
    """The cluster could not serve a request: a part failed on every retry, or the evaluators
    cannot be placed."""


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError(
            "evaluating on a Ray cluster needs Ray, which comes with Flower's simulation "
            "extra: pip install 'blindfed[flower]' (Python 3.11 or later)"
        ) from None
    return ray


def _retryable() -> tuple[type[BaseException], ...]:
    """Errors that say an evaluator or its node is gone, not that the part is wrong."""
    e = _ray().exceptions
    return (e.RayActorError, e.WorkerCrashedError, e.NodeDiedError, e.ObjectLostError)


class _Evaluator:
    """A Ray actor: the student's blocks, and the keys of the sessions it serves."""

    def __init__(self, student: tuple[dict, dict], parameters: bytes, mode: str, threads: int):
        from blindfed import set_num_threads
        from blindfed.nn.student import Student

        set_num_threads(threads)
        self.parameters = ckks.Parameters.from_bytes(parameters)
        self.blocks = Student.rebuild(*student).export_blocks()
        self.mode = mode
        self.keys: collections.OrderedDict[str, ckks.EvaluationKeys] = collections.OrderedDict()

    def where(self) -> tuple[str, int]:
        """This evaluator's node and process (tests kill the process)."""
        import os

        import ray

        return ray.get_runtime_context().get_node_id(), os.getpid()

    def forget(self, session: str) -> None:
        self.keys.pop(session, None)

    def _keys(self, session: str, ref: Any) -> ckks.EvaluationKeys:
        import ray

        if session in self.keys:
            self.keys.move_to_end(session)
        else:
            while len(self.keys) >= SESSIONS_PER_EVALUATOR:
                self.keys.popitem(last=False)
            self.keys[session] = ckks.EvaluationKeys.from_bytes(self.parameters, ray.get(ref))
        return self.keys[session]

    def run(
        self,
        mailbox: Any,
        ticket: str,
        session: str,
        keys: list[Any] | None,
        part: Part,
    ) -> PartResult:
        import ray

        plan, payload, normalized = part
        execute = self.mode == "execute"
        if execute:
            x = PackedBatch.from_bytes(self.parameters, payload)
            x_hat = PackedBatch.from_bytes(self.parameters, normalized) if normalized else None
        else:
            x = load_simulated(payload)
            x_hat = load_simulated(normalized) if normalized else None

        def refresh(block: int, request: bytes) -> bytes:
            return ray.get(mailbox.ask.remote(ticket, block, request))

        def progress(block: int, stage: str) -> None:
            mailbox.note.remote(ticket, block, stage)

        return evaluate_pass(
            self.blocks,
            plan,
            x,
            mode=self.mode,
            parameters=self.parameters,
            keys=self._keys(session, keys[0]) if execute and keys else None,
            refresh=refresh,
            x_hat=x_hat,
            progress=progress,
        )


class _Mailbox:
    """A Ray actor on the driver's node through which evaluators reach the driver: a refresh
    request waits here until the driver answers it; progress notes are only delivered."""

    def __init__(self) -> None:
        self.queues: dict[str, asyncio.Queue] = {}
        self.waiting: dict[int, tuple[str, asyncio.Future]] = {}
        self.closed: collections.deque[str] = collections.deque(maxlen=CLOSED_RUNS_REMEMBERED)
        self.count = 0

    def ping(self) -> bool:
        return True

    def _queue(self, run: str) -> asyncio.Queue:
        return self.queues.setdefault(run, asyncio.Queue())

    async def ask(self, ticket: str, block: int, request: bytes) -> bytes:
        run = ticket.split("/")[0]
        if run in self.closed:
            raise RuntimeError("the provider no longer waits for this pass")
        self.count += 1
        future = asyncio.get_running_loop().create_future()
        self.waiting[self.count] = (run, future)
        self._queue(run).put_nowait(("refresh", self.count, ticket, block, request))
        reply, error = await future
        if error is not None:
            raise RuntimeError(error)
        return reply

    def note(self, ticket: str, block: int, stage: str) -> None:
        run = ticket.split("/")[0]
        if run not in self.closed:
            self._queue(run).put_nowait(("stage", 0, ticket, block, stage))

    async def poll(self, run: str) -> list[tuple]:
        """Everything waiting for ``run`` (at least one message, or none once it is closed)."""
        queue = self._queue(run)
        items = [await queue.get()]
        while not queue.empty():
            items.append(queue.get_nowait())
        return [item for item in items if item is not None]

    def answer(self, key: int, reply: bytes | None, error: str | None = None) -> None:
        _, future = self.waiting.pop(key, (None, None))
        if future is not None and not future.done():
            future.set_result((reply, error))

    def close(self, run: str) -> None:
        self.closed.append(run)
        queue = self.queues.pop(run, None)
        if queue is not None:
            queue.put_nowait(None)  # wakes a waiting poll
        for key in [k for k, (r, _) in self.waiting.items() if r == run]:
            self.answer(key, None, "the provider no longer waits for this pass")


class _Pool:
    """Which evaluator takes the next part: the least busy, preferring one that already holds
    the session's keys. Shared by every request in flight."""

    def __init__(self, size: int) -> None:
        self.busy = [0] * size
        self.held: list[set[str]] = [set() for _ in range(size)]
        self.lock = threading.Lock()

    def take(self, session: str, avoid: set[int]) -> int:
        with self.lock:
            candidates = [i for i in range(len(self.busy)) if i not in avoid] or list(
                range(len(self.busy))
            )
            i = min(candidates, key=lambda i: (self.busy[i], session not in self.held[i], i))
            self.busy[i] += 1
            self.held[i].add(session)
            return i

    def give_back(self, i: int, *, failed: bool = False) -> None:
        with self.lock:
            self.busy[i] -= 1
            if failed:
                self.held[i].clear()

    def forget(self, session: str) -> None:
        with self.lock:
            for held in self.held:
                held.discard(session)


class RayCluster:
    """Where a :class:`~blindfed.protocol.Provider` evaluates its blocks: evaluators on a Ray
    cluster instead of the provider's process.

    Args:
        address: the Ray cluster to join (``"auto"``: the one ``ray start`` runs on this
            machine; ``"ray://host:10001"``: a remote one); None starts a Ray instance in this
            process (or joins ``RAY_ADDRESS``). Ignored if Ray is already initialised.
        evaluators: how many evaluators; None: one per node with CPUs, each using all of its
            node's CPUs (so a node holds each owner's keys once).
        cpus_per_evaluator: the CPUs (threads) each evaluator uses when ``evaluators`` is set.
        retries: how often a part whose evaluator died runs again before the request fails.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        evaluators: int | None = None,
        cpus_per_evaluator: int = 1,
        retries: int = 4,
    ) -> None:
        if evaluators is not None and evaluators < 1:
            raise ValueError(f"evaluators must be at least 1, got {evaluators}")
        if cpus_per_evaluator < 1:
            raise ValueError(f"cpus_per_evaluator must be at least 1, got {cpus_per_evaluator}")
        if retries < 0:
            raise ValueError(f"retries must be at least 0, got {retries}")
        _ray()  # fail here, naming the extra, rather than at the first request
        self.address = address
        self.evaluators = evaluators
        self.cpus_per_evaluator = cpus_per_evaluator
        self.retries = retries
        self._actors: list[Any] = []
        self._mailbox: Any = None
        self._pool = _Pool(0)
        self._keys: dict[str, Any] = {}
        self._student: Any = None
        self._started_ray = False

    @property
    def concurrency(self) -> int:
        """Parts that can run at once (the evaluators)."""
        return len(self._actors)

    def start(self, student: Any, parameters: ckks.Parameters, mode: str) -> None:
        """Places the evaluators (the provider calls this once); fails if they cannot run."""
        ray = _ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if self._actors:
            raise RuntimeError("this cluster already serves a provider")
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            self._started_ray = True
        if self.evaluators is None:
            nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) >= 1]
            placements = [
                (NodeAffinitySchedulingStrategy(n["NodeID"], soft=True), int(n["Resources"]["CPU"]))
                for n in nodes
            ]
        else:
            placements = [("SPREAD", self.cpus_per_evaluator)] * self.evaluators
        available = int(ray.cluster_resources().get("CPU", 0))
        wanted = sum(cpus for _, cpus in placements)
        if not placements or wanted > available:
            raise ClusterError(
                f"the evaluators need {wanted} CPUs; the cluster has {available} "
                "(fewer or smaller evaluators, or more nodes)"
            )
        # Held for the cluster's life: a restarted evaluator builds its blocks from it again.
        self._student = ray.put((student.describe(), student.state_dict()))
        evaluator = ray.remote(_Evaluator)
        self._actors = [
            evaluator.options(
                num_cpus=cpus, max_restarts=-1, max_task_retries=0, scheduling_strategy=where
            ).remote(self._student, parameters.to_bytes(), mode, cpus)
            for where, cpus in placements
        ]
        here = ray.get_runtime_context().get_node_id()
        self._mailbox = (
            ray.remote(_Mailbox)
            .options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(here, False))
            .remote()
        )
        self._pool = _Pool(len(self._actors))
        try:
            ray.get(
                [a.where.remote() for a in self._actors] + [self._mailbox.ping.remote()],
                timeout=START_TIMEOUT,
            )
        except ray.exceptions.GetTimeoutError:
            self.shutdown()
            raise ClusterError(
                f"the evaluators did not start within {START_TIMEOUT:.0f} s (see `ray status`)"
            ) from None

    def where(self) -> list[tuple[str, int]]:
        """Each evaluator's node and process id."""
        ray = _ray()
        return ray.get([a.where.remote() for a in self._actors])

    def add_session(self, session: str, keys: bytes) -> None:
        """Puts a session's evaluation keys in the object store (once: every part refers to
        this copy)."""
        self._keys[session] = _ray().put(keys)

    def drop_session(self, session: str) -> None:
        """Drops a session's keys from the object store and every evaluator."""
        if self._keys.pop(session, None) is not None:
            for actor in self._actors:
                actor.forget.remote(session)
            self._pool.forget(session)

    def run(
        self,
        session: str,
        parts: Sequence[Part],
        refresh: BlockRefresh,
        progress: BlockProgress | None = None,
    ) -> list[PartResult]:
        """Runs every part on an evaluator, answering their refreshes through ``refresh`` (in
        this thread); returns their results in order. A part whose evaluator dies runs again
        elsewhere; an error of the part itself (bad ciphertexts, a failed refresh) is raised."""
        ray = _ray()
        retryable = _retryable()
        run = secrets.token_hex(8)
        keys = [self._keys[session]] if session in self._keys else None
        attempts = [0] * len(parts)
        results: list[PartResult | None] = [None] * len(parts)
        flight: dict[Any, tuple[int, int]] = {}

        def submit(i: int, avoid: set[int]) -> None:
            e = self._pool.take(session, avoid)
            ticket = f"{run}/{i}/{attempts[i]}"
            ref = self._actors[e].run.remote(self._mailbox, ticket, session, keys, parts[i])
            flight[ref] = (i, e)

        for i in range(len(parts)):
            submit(i, set())
        poll = self._mailbox.poll.remote(run)
        try:
            while flight:
                [ready], _ = ray.wait([poll, *flight], num_returns=1)
                if ready == poll:
                    for message in ray.get(poll):
                        self._deliver(message, attempts, results, refresh, progress)
                    poll = self._mailbox.poll.remote(run)
                    continue
                i, e = flight.pop(ready)
                try:
                    results[i] = ray.get(ready)
                except retryable as error:
                    self._pool.give_back(e, failed=True)
                    attempts[i] += 1
                    if attempts[i] > self.retries:
                        raise ClusterError(
                            f"part {i} of the request failed on {attempts[i]} evaluators: {error}"
                        ) from error
                    log.warning("evaluator %d died; part %d runs again elsewhere", e, i)
                    # Ray restarts dead evaluators; a moment lets it learn of the death, so
                    # that the next attempt waits for a restart instead of hitting a corpse.
                    time.sleep(min(2.0 ** (attempts[i] - 1), 10.0))
                    submit(i, {e})
                    continue
                except ray.exceptions.RayTaskError as error:
                    self._pool.give_back(e)
                    cause = error.cause
                    raise (cause if isinstance(cause, Exception) else error) from None
                self._pool.give_back(e)
        finally:
            self._mailbox.close.remote(run)
            for ref, (_, e) in flight.items():
                ray.cancel(ref)
                self._pool.give_back(e)
        return [r for r in results if r is not None]

    def _deliver(
        self,
        message: tuple,
        attempts: list[int],
        results: list[PartResult | None],
        refresh: BlockRefresh,
        progress: BlockProgress | None,
    ) -> None:
        kind, key, ticket, block, data = message
        _, part, attempt = ticket.split("/")
        current = attempts[int(part)] == int(attempt) and results[int(part)] is None
        if kind == "stage":
            if current and progress is not None:
                progress(block, data)
            return
        if not current:
            self._mailbox.answer.remote(key, None, "an abandoned attempt")
            return
        try:
            reply = refresh(block, data)
        except Exception as e:
            self._mailbox.answer.remote(key, None, f"{type(e).__name__}: {e}")
            raise
        self._mailbox.answer.remote(key, reply)

    def shutdown(self) -> None:
        """Stops the evaluators (and the Ray instance, if this cluster started it)."""
        ray = _ray()
        for actor in [*self._actors, self._mailbox]:
            if actor is not None:
                ray.kill(actor)
        self._actors, self._mailbox, self._keys, self._student = [], None, {}, None
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False
