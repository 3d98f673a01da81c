"""Privacy boosting against model extraction: stochastic block sampling and sample permutations.

*Block sampling* (as in the paper): the last block is always revealed (the owner's head needs
it); walking back from it, a revealed block is preceded by a hidden one, and a hidden block by
a revealed one with probability 1/2. Two revealed outputs are therefore never consecutive,
so an owner never holds the input and output of a single block, and about a third of the
blocks are revealed. A hidden block's output stays encrypted (masked refresh) and the
owner's adapter sees zeros there.

*Permutations*: at every revealed block the provider shuffles the samples within windows the
owner declares (runs of samples with the same label, so labels stay aligned without being
sent); the owner gets the permutation relative to its previous revealed output, never the
first one, so it can chain its revealed outputs but not tie them to its inputs.

>>> import random
>>> rng = random.Random(0)
>>> pattern = block_pattern(12, rng)
>>> bool(pattern[-1]), any(a and b for a, b in zip(pattern, pattern[1:]))
(True, False)
>>> order = window_permutation([3, 1, 2], rng)
>>> sorted(order[:3]), order[3], sorted(order[4:])
([0, 1, 2], 3, [4, 5])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

__all__ = ["Random", "block_pattern", "label_windows", "request_starts", "window_permutation"]


class Random(Protocol):
    """What the draws need: ``random.SystemRandom()`` (the provider's default, a CSPRNG) or a
    seeded ``random.Random`` / ``numpy.random.Generator`` for reproducible studies."""

    def random(self) -> float: ...
    def shuffle(self, x: list[int]) -> None: ...


def block_pattern(blocks: int, rng: Random, *, enabled: bool = True) -> list[bool]:
    """Which blocks' outputs the owner sees (all of them if ``enabled`` is false)."""
    if blocks < 1:
        raise ValueError(f"a model has at least one block, got {blocks}")
    if not enabled:
        return [True] * blocks
    revealed = [False] * blocks
    revealed[-1] = True
    for i in range(blocks - 2, -1, -1):
        revealed[i] = (not revealed[i + 1]) and bool(rng.random() < 0.5)
    return revealed


def request_starts(pattern: Sequence[bool]) -> set[int]:
    """The blocks a request starts at under ``pattern``: block 0 and every block after a
    revealed one (the owner holds those blocks' inputs in the clear).

    >>> sorted(request_starts([False, True, False, True]))
    [0, 2]
    """
    return {0} | {i + 1 for i, revealed in enumerate(pattern[:-1]) if revealed}


def window_permutation(windows: Sequence[int], rng: Random) -> list[int]:
    """A uniformly random permutation within each run of consecutive samples: output sample p
    is input sample ``order[p]``."""
    order: list[int] = []
    start = 0
    for w in windows:
        if w < 1:
            raise ValueError(f"windows must be positive, got {w}")
        run = list(range(start, start + w))
        rng.shuffle(run)
        order += run
        start += w
    return order


def label_windows(labels: Sequence[int], window: int, group: int) -> list[int]:
    """Runs of equal consecutive labels, at most ``window`` long and never across a boundary
    of ``group`` samples (the provider permutes within one ciphertext group). A negative label
    marks an unlabelled sample (one the owner only infers): it is a run of its own, so its
    place is kept.

    >>> label_windows([-1, -1, 0, 0, 0, 1], window=2, group=100)
    [1, 1, 2, 1, 1]
    """
    if window < 1 or group < 1:
        raise ValueError("window and group must be positive")
    runs: list[int] = []
    for i, label in enumerate(labels):
        starts = (
            i == 0 or label < 0 or labels[i - 1] != label or runs[-1] >= window or i % group == 0
        )
        if starts:
            runs.append(1)
        else:
            runs[-1] += 1
    return runs
