"""Server-side optimisers that act on the secure sum (Reddi et al., "Adaptive Federated
Optimization", ICLR 2021).

The provider never sees an owner's update, only the secure sum of ``n * delta``; dividing by
the summed sample count gives the weighted mean update ``Delta`` (a pseudo-gradient, pointing
downhill). A server optimiser turns ``Delta`` into the step applied to the global model:

- ``fedavg``: ``x += lr * Delta`` (``lr = 1``: plain FedAvg, McMahan et al. 2017);
- ``fedavgm``: ``m = momentum * m + Delta; x += lr * m`` (Hsu et al. 2019);
- ``fedadam``: ``m = b1 m + (1 - b1) Delta; v = b2 v + (1 - b2) Delta^2;
  x += lr * m / (sqrt(v) + tau)``.

Its state (``m``, ``v``) is the provider's and is checkpointed with the model, so a resumed run
takes the same steps as an uninterrupted one.

>>> import numpy as np
>>> opt = ServerOptimizer("fedavgm", lr=1.0, momentum=0.5)
>>> x = np.zeros(2)
>>> x = opt.step(x, np.array([1.0, -2.0])); x.tolist()
[1.0, -2.0]
>>> opt.step(x, np.array([1.0, -2.0])).tolist()
[2.5, -5.0]
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["KINDS", "ServerOptimizer"]

#: The optimisers by name.
KINDS: tuple[str, ...] = ("fedavg", "fedavgm", "fedadam")


class ServerOptimizer:
    """One of :data:`KINDS` with its hyperparameters and state.

    Args:
        kind: ``fedavg``, ``fedavgm`` or ``fedadam``.
        lr: the server learning rate (``fedavg`` with 1.0 is plain FedAvg).
        momentum: ``fedavgm``'s momentum.
        betas, tau: ``fedadam``'s moment decays and adaptivity (Reddi et al.'s defaults).
    """

    def __init__(
        self,
        kind: str = "fedavg",
        *,
        lr: float = 1.0,
        momentum: float = 0.9,
        betas: tuple[float, float] = (0.9, 0.99),
        tau: float = 1e-3,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown server optimizer {kind!r}; known: {', '.join(KINDS)}")
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"server lr must be a positive number, got {lr!r}")
        for name, value in (("momentum", momentum), ("beta1", betas[0]), ("beta2", betas[1])):
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if not (math.isfinite(tau) and tau > 0):
            raise ValueError(f"tau must be a positive number, got {tau!r}")
        self.kind, self.lr, self.momentum, self.betas, self.tau = kind, lr, momentum, betas, tau
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None

    def __repr__(self) -> str:
        extra = {"fedavg": "", "fedavgm": f", momentum={self.momentum:g}"}.get(
            self.kind, f", betas={self.betas}, tau={self.tau:g}"
        )
        return f"ServerOptimizer({self.kind!r}, lr={self.lr:g}{extra})"

    def step(self, vector: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """The new global vector from the old one and the mean update ``delta``."""
        vector = np.asarray(vector, dtype=np.float64)
        delta = np.asarray(delta, dtype=np.float64)
        if delta.shape != vector.shape:
            raise ValueError(f"update shaped {delta.shape}, model {vector.shape}")
        if not np.isfinite(delta).all():
            raise ValueError("the mean update has NaN or infinite entries")
        if self.m is not None and self.m.shape != vector.shape:
            raise ValueError(f"optimizer state shaped {self.m.shape}, model {vector.shape}")
        if self.kind == "fedavg":
            return vector + self.lr * delta
        if self.kind == "fedavgm":
            self.m = delta.copy() if self.m is None else self.momentum * self.m + delta
            return vector + self.lr * self.m
        b1, b2 = self.betas
        if self.m is None or self.v is None:
            self.m, self.v = np.zeros_like(vector), np.zeros_like(vector)
        self.m = b1 * self.m + (1 - b1) * delta
        self.v = b2 * self.v + (1 - b2) * delta**2
        return vector + self.lr * self.m / (np.sqrt(self.v) + self.tau)

    def state(self) -> dict[str, np.ndarray]:
        """The state to checkpoint (empty before the first step and for ``fedavg``)."""
        return {k: v for k, v in (("opt_m", self.m), ("opt_v", self.v)) if v is not None}

    def load(self, state: Any) -> None:
        """Restores :meth:`state` (a mapping such as an open ``.npz``)."""
        self.m = np.array(state["opt_m"]) if "opt_m" in state else None
        self.v = np.array(state["opt_v"]) if "opt_v" in state else None
