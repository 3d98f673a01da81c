"""FedAvg's pieces: the learning-rate schedule, weighted averaging, and the checks on a
secure sum."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from blindfed.fl.fedavg import Schedule, apply_sum, check_sum, contribution, get_vector, make_model  # noqa: E402  # noqa: E402


def test_a_sum_no_honest_owners_can_make_is_refused():
    model = make_model(2, 4, 3, rank=1)
    size = sum(p.numel() for p in model.parameters())
    good = contribution(np.full(size, 0.01), [1, 0], 30) + contribution(np.zeros(size), [1, 1], 9)
    check_sum(good, 2, 2, 2.0**20)
    corrupted = good.copy()
    corrupted[5] = 1e12  # what a flipped byte in an unmasking answer gives
    with pytest.raises(ValueError, match=r"secure aggregation.*2 owners"):
        check_sum(corrupted, 2, 2, 2.0**20)
    flags = good.copy()
    flags[-2] = 7.0
    with pytest.raises(ValueError, match="block flags"):
        check_sum(flags, 2, 2, 2.0**20)


def test_schedule_and_weighted_average():
    s = Schedule()
    assert (s.lr_at(24), s.lr_at(25), s.lr_at(39), s.lr_at(40)) == pytest.approx(
        (1e-3, 1e-4, 1e-4, 1e-5)
    )
    with pytest.raises(ValueError, match="round"):
        s.lr_at(51)
    from blindfed.fl.fedavg import make_model

    model = make_model(2, 4, 3, rank=1)
    start = get_vector(model)
    d1, d2 = np.full_like(start, 1.0), np.full_like(start, 4.0)
    total = contribution(d1, [1, 0], 30) + contribution(d2, [0, 0], 10)
    assert apply_sum(model, total) == 40
    # (30 * 1 + 10 * 4) / 40 = 1.75, up to float32 weights.
    assert np.allclose(get_vector(model) - start, 1.75, atol=1e-5)
    assert model.seen_blocks.tolist() == [True, False]
