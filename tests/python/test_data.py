"""The data sets shipped by packages and how they are shared among owners."""

from __future__ import annotations

import numpy as np
import pytest

from blindfed.data import dirichlet_partition, natural_partition


def test_dirichlet_partition_covers_every_sample_once_and_skews_with_small_alpha():
    labels = np.repeat(np.arange(10), 50)
    for alpha in (100.0, 1.0, 0.01):
        parts = dirichlet_partition(labels, 5, alpha, seed=1)
        assert sorted(np.concatenate(parts).tolist()) == list(range(500))
    flat = dirichlet_partition(labels, 5, 100.0, seed=1)
    skewed = dirichlet_partition(labels, 5, 0.01, seed=1, min_samples=0)

    def classes_per_owner(parts):
        return np.mean([len(np.unique(labels[p])) for p in parts if len(p)])

    assert classes_per_owner(flat) == 10
    assert classes_per_owner(skewed) < 5
    assert all(
        (a == b).all()
        for a, b in zip(
            dirichlet_partition(labels, 5, 1.0, seed=3),
            dirichlet_partition(labels, 5, 1.0, seed=3),
            strict=True,
        )
    )
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_partition(labels, 5, 0.0)
    with pytest.raises(ValueError, match="cannot give"):
        dirichlet_partition(labels[:4], 5, 1.0)
    assert [p.tolist() for p in natural_partition(np.array([2, 1, 2, 1, 3]))] == [
        [1, 3],
        [0, 2],
        [4],
    ]
