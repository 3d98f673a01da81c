"""Server optimisers: each takes its published step on the secure sum."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from blindfed.fl.server_opt import ServerOptimizer  # noqa: E402


def test_server_optimizers_take_their_published_steps():
    x, d1, d2 = np.array([1.0, -1.0]), np.array([0.5, 0.1]), np.array([-0.5, 0.3])
    assert np.allclose(ServerOptimizer("fedavg", lr=2.0).step(x, d1), x + 2 * d1)
    m = ServerOptimizer("fedavgm", lr=0.5, momentum=0.9)
    y = m.step(m.step(x, d1), d2)
    assert np.allclose(y, x + 0.5 * d1 + 0.5 * (0.9 * d1 + d2))
    a = ServerOptimizer("fedadam", lr=0.1, betas=(0.9, 0.99), tau=1e-3)
    y = a.step(x, d1)
    m1, v1 = 0.1 * d1, 0.01 * d1**2
    assert np.allclose(y, x + 0.1 * m1 / (np.sqrt(v1) + 1e-3))
    # The state round-trips: a restored optimiser takes the same next step.
    b = ServerOptimizer("fedadam", lr=0.1)
    b.load(a.state())
    assert np.allclose(a.step(y, d2), b.step(y, d2))
    for bad in ({"kind": "sgd"}, {"lr": 0.0}, {"momentum": 1.0}, {"tau": -1.0}):
        with pytest.raises(ValueError):
            ServerOptimizer(**bad)
    with pytest.raises(ValueError, match="NaN"):
        ServerOptimizer().step(x, np.array([np.nan, 0.0]))
