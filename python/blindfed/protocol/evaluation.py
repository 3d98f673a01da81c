"""One request's samples through the provider's blocks: evaluate, hide, sanitise.

The same code serves a request in the provider's process (the whole batch at once) and on a
cluster's evaluators (:mod:`blindfed.protocol.cluster`, one part of the batch each). What it
needs is decided beforehand by the provider's driver, which keeps every random choice: the
blocks the pass goes through and which of them are hidden, and the permutation of the
samples. Only the randomness that never leaves the provider's machines unmasked (refresh
masks, the sanitiser's fresh encryption of zero and its flooding noise) is drawn where the
evaluation runs, by the Rust core's CSPRNG.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from blindfed import ckks
from blindfed._core import sanitize
from blindfed.block import PackedBatch

__all__ = [
    "PassPlan",
    "evaluate_pass",
    "join_parts",
    "load_simulated",
    "part_bounds",
    "save_simulated",
]

#: A masked refresh made while evaluating a block: (block, request bytes) -> reply bytes.
BlockRefresh = Callable[[int, bytes], bytes]
#: Progress within a block: (block, stage).
BlockProgress = Callable[[int, str], None]


@dataclass(frozen=True)
class PassPlan:
    """What a pass does, fixed by the provider's driver before any block runs.

    ``start`` is the request's block; the pass stops at the first revealed block (the last
    block is always revealed). ``hidden`` lists the blocks on the way whose outputs go on
    encrypted, through a masked refresh. ``order`` permutes the samples of the output (sample
    p is input sample ``order[p]``).
    """

    start: int
    stop: int
    hidden: tuple[int, ...]
    order: tuple[int, ...]
    flood_bits: int

    def restricted(self, begin: int, end: int) -> PassPlan:
        """The plan of samples ``begin:end`` alone (a part of whole permutation windows)."""
        local = tuple(q - begin for q in self.order[begin:end])
        if sorted(local) != list(range(end - begin)):
            raise ValueError(f"samples {begin}:{end} are not a union of permutation windows")
        return PassPlan(self.start, self.stop, self.hidden, local, self.flood_bits)


def evaluate_pass(
    blocks: Sequence[Any],
    plan: PassPlan,
    x: Any,
    *,
    mode: str,
    parameters: ckks.Parameters,
    keys: ckks.EvaluationKeys | None,
    refresh: BlockRefresh,
    x_hat: Any = None,
    progress: BlockProgress | None = None,
    on_output: Callable[[int, Any], None] | None = None,
) -> tuple[bytes, list[float]]:
    """Runs ``x`` (a :class:`PackedBatch`, or a float64 array in simulate mode) from
    ``plan.start`` to ``plan.stop``; returns the sanitised output's bytes and the seconds
    each block took (the sanitiser's counted in the last block's).

    Only the first block gets ``x_hat`` (its input is the only one its owner saw).
    ``on_output`` sees every block's output before it is hidden or sanitised
    (instrumentation: the end-to-end bench's precision report).
    """
    seconds = []
    for index in range(plan.start, plan.stop + 1):
        started = time.perf_counter()
        block = blocks[index]
        if mode == "execute":

            def block_refresh(request: bytes, index: int = index) -> bytes:
                return refresh(index, request)

            on_stage = None
            if progress is not None:

                def on_stage(stage: str, index: int = index) -> None:
                    progress(index, stage)

            x, _ = block.evaluate(
                x,
                keys,
                block_refresh,
                x_hat=x_hat if index == plan.start else None,
                progress=on_stage,
            )
            if on_output is not None:
                on_output(index, x)
            if index in plan.hidden:
                x = x.refreshed(block_refresh)
        else:
            x = block.mirror(x, params=parameters, x_hat=x_hat if index == plan.start else None)
            if on_output is not None:
                on_output(index, x)
        seconds.append(time.perf_counter() - started)
    started = time.perf_counter()
    if mode == "execute":
        payload = sanitize(x, list(plan.order), keys, flood_bits=plan.flood_bits).to_bytes()
    else:
        payload = save_simulated(x[list(plan.order)])
    seconds[-1] += time.perf_counter() - started
    return payload, seconds


def part_bounds(windows: Sequence[int], group: int) -> list[tuple[int, int]]:
    """Splits a batch into parts of whole windows, one per ciphertext group: a part ends at
    the first window boundary at or past each multiple of ``group`` samples. In execute
    mode windows never cross a group, so the parts are exactly the groups."""
    bounds, begin, end = [], 0, 0
    for w in windows:
        end += w
        if end - begin >= group or end % group == 0:
            bounds.append((begin, end))
            begin = end
    if end > begin:
        bounds.append((begin, end))
    return bounds


def save_simulated(x: np.ndarray) -> bytes:
    """A simulate-mode payload: the activations as ``.npy`` bytes."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(x, dtype=np.float64))
    return buf.getvalue()


def load_simulated(payload: bytes) -> np.ndarray:
    """The activations of a simulate-mode payload (no pickles; any other bytes refused)."""
    return np.load(io.BytesIO(payload), allow_pickle=False)


def join_parts(mode: str, parameters: ckks.Parameters, payloads: Sequence[bytes]) -> bytes:
    """The reply payload made of its parts' sanitised payloads, in order: the same bytes an
    evaluation of the whole batch at once would give (up to fresh randomness)."""
    if len(payloads) == 1:
        return payloads[0]
    if mode == "execute":
        parts = [PackedBatch.from_bytes(parameters, p) for p in payloads]
        return PackedBatch.concat(parts).to_bytes()
    return save_simulated(np.concatenate([load_simulated(p) for p in payloads]))
