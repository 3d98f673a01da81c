"""A secure-aggregation round in one process."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from blindfed.fl.secure_sum import secure_sum  # noqa: E402


def test_secure_sum_in_process_is_the_fixed_point_sum():
    rng = np.random.default_rng(0)
    vectors = {i: rng.uniform(-3, 3, 50) for i in (4, 9, 11)}
    total = secure_sum(vectors, bound=4.0)
    assert np.abs(total - sum(vectors.values())).max() <= 3 * 2.0**-20
    with pytest.raises(ValueError, match="at least 2"):
        secure_sum({1: np.zeros(3)}, bound=1.0)
    with pytest.raises(ValueError, match="one length"):
        secure_sum({1: np.zeros(3), 2: np.zeros(4)}, bound=1.0)
