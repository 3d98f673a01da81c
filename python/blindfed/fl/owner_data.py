"""What a data owner brings to a federation: its labelled training images and its test images.

Real owners load theirs from a local ``.npz`` (``train_images``, ``train_labels``,
``test_images``, ``test_labels``; images (n, channels, height, width) as the provider's model
expects). The embedded default gives owner ``k`` of ``K`` a Dirichlet(alpha) share of
scikit-learn's digits training split and an even share of the test split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blindfed.atomic import write_atomically

__all__ = ["OwnerData", "held_out"]


def held_out(labels: np.ndarray, fraction: float, *, seed: int = 0) -> np.ndarray:
    """A mask holding out a seeded ``fraction`` of each label's samples (a validation split
    drawn the same way whether the samples are images or their cached block outputs)."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        where = np.flatnonzero(labels == label)
        held[rng.permutation(where)[: round(fraction * len(where))]] = True
    if held.all() or not held.any():
        raise ValueError(
            f"holding out {fraction:g} of {len(held)} training samples leaves a split empty"
        )
    return held


@dataclass(frozen=True)
class OwnerData:
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if x.ndim != 4 or y.shape != (len(x),):
                raise ValueError(
                    f"{split}: expected images (n, c, h, w) and n labels, got {x.shape} and "
                    f"{y.shape}"
                )

    @classmethod
    def load(cls, path: str | Path) -> OwnerData:
        """An owner's own data from an ``.npz`` file on its machine."""
        with np.load(path, allow_pickle=False) as z:
            missing = {"train_images", "train_labels", "test_images", "test_labels"} - set(z)
            if missing:
                raise ValueError(f"{path} lacks {sorted(missing)}")
            return cls(
                *(
                    np.asarray(z[k])
                    for k in ("train_images", "train_labels", "test_images", "test_labels")
                )
            )

    def save(self, path: str | Path) -> None:
        """Writes the arrays :meth:`load` reads (atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {
            "train_images": self.train_images,
            "train_labels": self.train_labels,
            "test_images": self.test_images,
            "test_labels": self.test_labels,
        }
        write_atomically(path, lambda f: np.savez(f, **arrays))

    def holdout(self, fraction: float = 0.2, *, seed: int = 0) -> OwnerData:
        """For choosing hyperparameters without the test split: a seeded ``fraction`` of each
        label's training images becomes the test split (the validation split), the rest the
        training split; the real test split is left out entirely."""
        held = held_out(self.train_labels, fraction, seed=seed)
        return OwnerData(
            self.train_images[~held],
            self.train_labels[~held],
            self.train_images[held],
            self.train_labels[held],
        )

    @classmethod
    def digits_share(
        cls,
        owner: int,
        owners: int,
        *,
        alpha: float = 1.0,
        seed: int = 0,
        train_samples: int | None = None,
        test_samples: int | None = None,
        model: str = "mnist-vit",
    ) -> OwnerData:
        """Owner ``owner``'s share of the embedded default: digits laid out for ``model`` (one
        of :data:`blindfed.zoo.foundations.MODELS`; the default's are laid out like MNIST).

        ``train_samples`` / ``test_samples`` cap the whole federation's splits (for quick
        runs) before they are shared out.
        """
        from blindfed.data import dirichlet_partition
        from blindfed.zoo.foundations import check_model, digits_for

        if not 0 <= owner < owners:
            raise ValueError(f"owner must be in [0, {owners}), got {owner}")
        check_model(model)
        rng = np.random.default_rng(seed)
        train, test = digits_for(model, "train"), digits_for(model, "test")
        tr = np.sort(rng.permutation(len(train))[:train_samples])
        te = np.sort(rng.permutation(len(test))[:test_samples])
        share = tr[dirichlet_partition(train.labels[tr], owners, alpha, seed=seed)[owner]]
        test_share = np.array_split(te, owners)[owner]
        return cls(
            train.images[share],
            train.labels[share],
            test.images[test_share],
            test.labels[test_share],
        )
