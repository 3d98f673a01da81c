"""Privacy boosting against model extraction, first defence: stochastic block sampling.

As in the paper, the last block is always revealed (the owner's head needs it); walking back
from it, a revealed block is preceded by a hidden one, and a hidden block by a revealed one
with probability 1/2. Two revealed outputs are therefore never consecutive, so an owner never
holds the input and output of a single block, and about a third of the blocks are revealed. A
hidden block's output stays encrypted (masked refresh) and the owner's adapter sees zeros
there. The second defence is :mod:`blindfed.protocol.permutation`.

>>> import random
>>> pattern = block_pattern(12, random.Random(0))
>>> bool(pattern[-1]), any(a and b for a, b in zip(pattern, pattern[1:]))
(True, False)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

__all__ = ["Random", "block_pattern", "request_starts"]


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
