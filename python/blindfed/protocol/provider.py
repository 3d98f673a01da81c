"""The model provider: holds the student, evaluates its blocks on owners' ciphertexts.

The provider never holds a secret key: it keeps each owner's public evaluation keys, answers
:class:`~blindfed.protocol.messages.ForwardRequest` messages with sanitised
:class:`~blindfed.protocol.messages.BlockOutput` messages, and reaches the owner for the
masked refreshes that hide the outputs of hidden blocks through a ``refresh`` callable
(request bytes in, reply bytes out: a network round trip).
"""

from __future__ import annotations

import io
import random
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from blindfed import ckks
from blindfed._core import permutation_rotation_steps
from blindfed.block import PackedBatch
from blindfed.protocol.block_sampling import Random, block_pattern
from blindfed.protocol.evaluation import (
    PassPlan,
    evaluate_pass,
    join_parts,
    load_simulated,
    part_bounds,
    save_simulated,
)
from blindfed.protocol.messages import (
    BlockOutput,
    ForwardRequest,
    MessageError,
    Offer,
    OwnerHello,
    decode,
)
from blindfed.protocol.permutation import window_permutation

if TYPE_CHECKING:
    from blindfed.protocol.cluster import RayCluster

__all__ = ["BlockEvent", "Provider"]

Refresh = Callable[[bytes], bytes]


@dataclass(frozen=True)
class BlockEvent:
    """What serving one block of one request cost the provider (reported to ``on_block``).

    ``upload_bytes`` counts what reached the provider for this block (the request's payload
    for its first block, the owner's refresh replies), ``download_bytes`` what left it (the
    refresh requests, and the reply if the block was revealed). ``seconds`` is the block's
    compute: on a cluster, the sum over the evaluators that ran its groups in parallel.
    """

    session: str
    batch: str
    block: int
    samples: int
    revealed: bool
    seconds: float
    upload_bytes: int
    download_bytes: int
    refreshes: int


@dataclass
class _Session:
    owner: str | None = None
    registered: bool = False
    keys: ckks.EvaluationKeys | None = None  # in process; a cluster holds its own copy
    # batch -> (its revealed blocks, the block its next request must start at)
    patterns: dict[str, tuple[list[bool], int]] = field(default_factory=dict)
    samples: int = 0  # samples that started a pass (counted against the budget)


class _Meter:
    """Refresh round trips and their bytes, counted per block."""

    def __init__(self, refresh: Refresh) -> None:
        self.refresh = refresh
        self.calls: dict[int, int] = {}
        self.sent: dict[int, int] = {}
        self.received: dict[int, int] = {}

    def __call__(self, block: int, request: bytes) -> bytes:
        reply = self.refresh(request)
        self.calls[block] = self.calls.get(block, 0) + 1
        self.sent[block] = self.sent.get(block, 0) + len(request)
        self.received[block] = self.received.get(block, 0) + len(reply)
        return reply


def _plan_parameters(student: Any, blocks: list[Any]) -> ckks.Parameters:
    """One parameter set for every block: the widest of their plans (at the student's
    scale)."""
    plans = student.plans(blocks)
    return max(plans, key=lambda p: (p["log_n"], p["levels"]))["parameters"]


def embedding_bytes(student: Any) -> bytes:
    """The student's patch embedding as ``.npz`` bytes (what an owner needs to encode inputs)."""
    buf = io.BytesIO()
    np.savez(
        buf,
        weight=student.patch_embed.proj.weight.detach().double().numpy(),
        bias=student.patch_embed.proj.bias.detach().double().numpy(),
        cls_token=student.cls_token.detach().double().numpy(),
        pos_embed=student.pos_embed.detach().double().numpy(),
        patch_size=np.array(student.config.patch_size),
    )
    return buf.getvalue()


class Provider:
    """The provider's side of the online phase.

    Args:
        student: the distilled FHE-friendly :class:`blindfed.nn.student.Student`.
        mode: ``"execute"`` (CKKS) or ``"simulate"`` (the plaintext mirror: the same
            polynomials on float64, for accuracy studies; reports must say so).
        window: the most samples one permutation window may hold.
        privacy: stochastic block sampling and permutations (off only for comparisons).
        permute, sample_blocks: either defence alone (each defaults to ``privacy``), for
            studies such as :mod:`blindfed.experiments.extraction`.
        sample_budget: the most samples one session may start passes with (training passes
            and inference together); None for no limit. Every pass draws new revealed blocks,
            and passes of the same images can be linked by their last block, so repeated
            passes are what erodes block sampling (``docs/security.md``).
        flood_bits: noise flooding magnitude (see :mod:`blindfed.protocol`).
        parameters: a CKKS parameter set overriding the planner's (tests use small insecure
            ones); every block must fit in it.
        rng: randomness for patterns and permutations; default ``random.SystemRandom()``.
        on_block: called with a :class:`BlockEvent` for every block served (progress bars,
            per-block time and traffic in reports).
        on_stage: called as an encrypted block enters each stage, with the request's batch
            name, the block and the stage ("group 1/1", "attention head 2/3", "MLP part
            1/4"): progress within a block, which takes minutes on a real model (execute mode).
        cluster: evaluate on a :class:`~blindfed.protocol.cluster.RayCluster` instead of this
            process: each request's ciphertext groups run in parallel on its evaluators, the
            random choices stay here, replies are the same. None (the default): in process.
    """

    #: Sees every block's output in process (the end-to-end bench's instrumentation only).
    _on_output: Callable[[int, Any], None] | None = None

    def __init__(
        self,
        student: Any,
        *,
        mode: str = "execute",
        window: int = 8,
        privacy: bool = True,
        flood_bits: int = 8,
        parameters: ckks.Parameters | None = None,
        rng: Random | None = None,
        permute: bool | None = None,
        sample_blocks: bool | None = None,
        sample_budget: int | None = None,
        on_block: Callable[[BlockEvent], None] | None = None,
        on_stage: Callable[[str, int, str], None] | None = None,
        cluster: RayCluster | None = None,
    ) -> None:
        if mode not in ("execute", "simulate"):
            raise ValueError(f"mode must be 'execute' or 'simulate', got {mode!r}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.mode = mode
        self.window = window
        self.permute = privacy if permute is None else permute
        self.sample_blocks = privacy if sample_blocks is None else sample_blocks
        self.flood_bits = flood_bits
        self.blocks = student.export_blocks()
        self.tokens = student.config.tokens
        self.width = student.config.width
        # The owner normalises the first block input of each request when the student was
        # distilled for it (its first norm is then exact there).
        self.owner_norm = bool(student.spec.owner_norm)
        self.eps = float(student.config.eps)
        self.parameters = parameters or _plan_parameters(student, self.blocks)
        steps = {s for b in self.blocks for s in b.rotation_steps(self.parameters)}
        steps.update(permutation_rotation_steps(self.tokens, window) if self.permute else [])
        self.rotation_steps = sorted(steps)
        self._embedding = embedding_bytes(student)
        self.sample_budget = sample_budget
        self._rng: Random = rng or random.SystemRandom()
        self._sessions: dict[str, _Session] = {}
        # Draws and session state are shared by requests served at once (several owners).
        self._lock = threading.Lock()
        self.on_block = on_block
        self.on_stage = on_stage
        self.cluster = cluster
        if cluster is not None:
            cluster.start(student, self.parameters, mode)

    @property
    def concurrency(self) -> int:
        """Requests worth serving at once: 1 in process (every core already serves one), the
        cluster's evaluators otherwise."""
        return 1 if self.cluster is None else max(1, self.cluster.concurrency)

    @property
    def samples_per_group(self) -> int:
        """Samples one ciphertext group holds: a batch this size costs one group per block."""
        return self.parameters.samples_per_group(self.tokens)

    # ---- handshake ------------------------------------------------------------------------

    def offer(self) -> bytes:
        """A new session: parameters, rotation steps, the patch embedding."""
        session = secrets.token_hex(8)
        self._sessions[session] = _Session()
        return Offer(
            session=session,
            mode=self.mode,
            blocks=len(self.blocks),
            tokens=self.tokens,
            width=self.width,
            window=self.window,
            flood_bits=self.flood_bits,
            rotation_steps=self.rotation_steps,
            owner_norm=self.owner_norm,
            eps=self.eps,
            parameters=self.parameters.to_bytes(),
            embedding=self._embedding,
        ).to_bytes()

    def register(self, hello: bytes) -> None:
        """Stores an owner's public evaluation keys for its session."""
        msg = decode(hello, OwnerHello)
        session = self._session(msg.session)
        keys = None
        if self.mode == "execute":
            keys = ckks.EvaluationKeys.from_bytes(self.parameters, msg.keys)
            if keys.public_key is None or keys.relin_key is None or keys.galois_keys is None:
                raise MessageError("OwnerHello: needs public, relinearisation and rotation keys")
            if self.cluster is not None:
                # Checked here, held there: the cluster's object store keeps the one copy.
                self.cluster.add_session(msg.session, msg.keys)
                keys = None
        session.owner, session.keys, session.registered = msg.owner, keys, True

    def close(self, session: str) -> None:
        """Ends a session and drops its evaluation keys (an unknown session is a no-op)."""
        self._sessions.pop(session, None)
        if self.cluster is not None:
            self.cluster.drop_session(session)

    def _session(self, name: str) -> _Session:
        try:
            return self._sessions[name]
        except KeyError:
            raise MessageError(f"unknown session {name!r}") from None

    # ---- the block-wise forward pass ------------------------------------------------------

    def forward(self, request: bytes, refresh: Refresh) -> bytes:
        """Evaluates from the request's block up to the next revealed block; returns its
        sanitised output. Hidden blocks on the way are joined by masked refreshes."""
        msg = decode(request, ForwardRequest)
        session = self._session(msg.session)
        if self.mode == "execute" and not session.registered:
            raise MessageError("no keys registered for this session")
        last = len(self.blocks) - 1
        if msg.block > last:
            raise MessageError(f"block {msg.block} does not exist (the model has {last + 1})")
        x = self._load(msg.payload)
        x_hat = None
        if msg.normalized:
            if not self.owner_norm:
                raise MessageError("ForwardRequest: normalised inputs were not asked for")
            x_hat = self._load(msg.normalized)
            if x_hat.shape != x.shape:
                raise MessageError("ForwardRequest: normalised inputs of another shape")
        batch = x.shape[0]
        self._check_windows(msg.windows, batch)
        with self._lock:
            plan, pattern, fresh = self._plan(session, msg, batch)
        meter = _Meter(refresh)
        progress = None
        if self.on_stage is not None and self.mode == "execute":
            on_stage = self.on_stage

            def progress(block: int, stage: str) -> None:
                on_stage(msg.batch, block, stage)

        if self.cluster is None:
            payload, seconds = evaluate_pass(
                self.blocks,
                plan,
                x,
                mode=self.mode,
                parameters=self.parameters,
                keys=session.keys,
                refresh=meter,
                x_hat=x_hat,
                progress=progress,
                on_output=self._on_output,
            )
        else:
            payload, seconds = self._on_cluster(msg, plan, x, x_hat, meter, progress)
        # State changes only once the request has been served.
        with self._lock:
            session.samples += batch if fresh else 0
            if plan.stop == last:
                session.patterns.pop(msg.batch, None)
            else:
                session.patterns[msg.batch] = (pattern, plan.stop + 1)
        reply = BlockOutput(
            session=msg.session,
            batch=msg.batch,
            block=plan.stop,
            hidden=list(plan.hidden),
            relative=list(plan.order) if msg.block > 0 else None,
            payload=payload,
        ).to_bytes()
        if self.on_block is not None:
            for i, block in enumerate(range(plan.start, plan.stop + 1)):
                revealed = block == plan.stop
                self.on_block(
                    BlockEvent(
                        session=msg.session,
                        batch=msg.batch,
                        block=block,
                        samples=batch,
                        revealed=revealed,
                        seconds=seconds[i],
                        upload_bytes=meter.received.get(block, 0) + (len(request) if i == 0 else 0),
                        download_bytes=meter.sent.get(block, 0) + (len(reply) if revealed else 0),
                        refreshes=meter.calls.get(block, 0),
                    )
                )
        return reply

    def _plan(
        self, session: _Session, msg: ForwardRequest, batch: int
    ) -> tuple[PassPlan, list[bool], bool]:
        """The request's pass (blocks, hidden ones, permutation), its batch's pattern and
        whether it starts a new pass; every random draw of a request is made here."""
        last = len(self.blocks) - 1
        state = session.patterns.get(msg.batch)
        # A request that does not continue its pass where the last reply left it starts a new
        # pass: an owner cannot skip a hidden block by asking for the next one itself.
        fresh = state is None or msg.block != state[1]
        if fresh and self.sample_blocks and 0 < msg.block == last:
            # Its output would be revealed, its input chosen: a single-block oracle. A pass
            # never needs it (the block before the last is always hidden).
            raise MessageError("a pass cannot start at the last block when blocks are sampled")
        budget = self.sample_budget
        if fresh and budget is not None and session.samples + batch > budget:
            raise MessageError(
                f"sample budget exhausted: {session.samples} of {budget} used, {batch} more asked"
            )
        if state is not None and not fresh:
            pattern = state[0]
        else:
            pattern = block_pattern(len(self.blocks), self._rng, enabled=self.sample_blocks)
            if self.sample_blocks and 0 < msg.block < last:
                # Resumed after a revealed block (e.g. the provider restarted): the next is hidden.
                pattern[msg.block] = False
        stop = next(i for i in range(msg.block, last + 1) if pattern[i] or i == last)
        hidden = tuple(i for i in range(msg.block, stop + 1) if not pattern[i])
        order = window_permutation(msg.windows, self._rng) if self.permute else range(batch)
        plan = PassPlan(msg.block, stop, hidden, tuple(order), self.flood_bits)
        return plan, pattern, fresh

    def _on_cluster(
        self,
        msg: ForwardRequest,
        plan: PassPlan,
        x: Any,
        x_hat: Any,
        meter: _Meter,
        progress: Callable[[int, str], None] | None,
    ) -> tuple[bytes, list[float]]:
        """The pass with one part per ciphertext group, in parallel on the cluster; a block's
        seconds are its parts' (the compute it cost, not the wall time)."""
        assert self.cluster is not None
        bounds = part_bounds(msg.windows, self.samples_per_group)
        if self.mode == "execute":
            inputs = [p.to_bytes() for p in x.split_groups()]
            normalized = [p.to_bytes() for p in x_hat.split_groups()] if x_hat is not None else None
        else:
            inputs = [save_simulated(x[a:b]) for a, b in bounds]
            normalized = (
                [save_simulated(x_hat[a:b]) for a, b in bounds] if x_hat is not None else None
            )
        parts = [
            (plan.restricted(a, b), inputs[k], normalized[k] if normalized else b"")
            for k, (a, b) in enumerate(bounds)
        ]
        results = self.cluster.run(msg.session, parts, meter, progress)
        payload = join_parts(self.mode, self.parameters, [r[0] for r in results])
        seconds = [sum(r[1][j] for r in results) for j in range(len(results[0][1]))]
        return payload, seconds

    def _check_windows(self, windows: list[int], batch: int) -> None:
        if sum(windows) != batch or max(windows, default=0) > self.window:
            raise MessageError(
                f"windows must sum to the batch size {batch} and be at most {self.window} long"
            )
        if self.mode == "execute":
            group = self.samples_per_group
            start = 0
            for w in windows:
                if start // group != (start + w - 1) // group:
                    raise MessageError(f"window at sample {start} crosses a ciphertext group")
                start += w

    def _load(self, payload: bytes) -> Any:
        if self.mode == "execute":
            x = PackedBatch.from_bytes(self.parameters, payload)
            _, tokens, width = x.shape
        else:
            try:
                x = load_simulated(payload)
            except Exception as e:  # numpy's header parser raises many types on bad bytes
                raise MessageError(f"simulate payload is not a .npy array ({e})") from None
            if x.dtype != np.float64 or x.ndim != 3 or not np.isfinite(x).all():
                raise MessageError("simulate payload must be finite float64 (batch, tokens, width)")
            tokens, width = x.shape[1:]
        if (tokens, width) != (self.tokens, self.width):
            raise MessageError(
                f"inputs are ({tokens} tokens, width {width}); the model takes "
                f"({self.tokens}, {self.width})"
            )
        return x
