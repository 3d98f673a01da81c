"""Privacy boosting against model extraction, second defence: sample permutations.

At every revealed block the provider shuffles the samples within windows the owner declares
(runs of samples with the same label, so labels stay aligned without being sent); the owner
gets the permutation relative to its previous revealed output, never the first one, so it can
chain its revealed outputs but not tie them to its inputs. The first defence is
:mod:`blindfed.protocol.block_sampling`.

>>> import random
>>> order = window_permutation([3, 1, 2], random.Random(0))
>>> sorted(order[:3]), order[3], sorted(order[4:])
([0, 1, 2], 3, [4, 5])
"""

from __future__ import annotations

from collections.abc import Sequence

from blindfed.protocol.block_sampling import Random

__all__ = ["label_windows", "window_permutation"]


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
