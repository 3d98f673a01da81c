"""Weighted federated averaging of adapters and heads, and the learning-rate schedule.

Each owner trains a copy of the global :class:`~blindfed.nn.adapter.AdaptedClassifier` on its
cached block outputs and contributes ``n * (local - global)``, the blocks it saw and ``n`` (its
sample count) as one vector; the secure sum of those vectors is all the aggregator learns, and
``global += sum(n * delta) / sum(n)`` is FedAvg weighted by sample counts.

>>> [f"{Schedule().lr_at(r):g}" for r in (1, 24, 25, 40, 50)]
['0.001', '0.001', '0.0001', '1e-05', '1e-05']
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from blindfed.fl.server_opt import ServerOptimizer
from blindfed.fl.settings import DEFAULTS
from blindfed.nn.adapter import AdaptedClassifier, train_epoch

__all__ = [
    "LocalTraining",
    "Schedule",
    "apply_sum",
    "check_sum",
    "contribution",
    "get_vector",
    "local_update",
    "make_model",
    "set_vector",
]


@dataclass(frozen=True)
class Schedule:
    """The paper's schedule by default: SGD at lr 1e-3 for 50 rounds, x0.1 from rounds 25 and
    40 on (rounds count from 1)."""

    lr: float = 1e-3
    rounds: int = 50
    milestones: tuple[int, ...] = (25, 40)
    gamma: float = 0.1

    def lr_at(self, round: int) -> float:
        if not 1 <= round <= self.rounds:
            raise ValueError(f"round must be in [1, {self.rounds}], got {round}")
        return float(self.lr * self.gamma ** sum(round >= m for m in self.milestones))


@dataclass(frozen=True)
class LocalTraining:
    """What an owner does with the global model in a round (SGD on its cached outputs).

    Five local epochs with momentum 0.9 by default: on the embedded default (3 owners,
    Dirichlet(1), the paper's learning rates) they reach 90.3 % after 50 rounds, against
    85.0 % for one epoch and 66.9 % for one epoch without momentum."""

    epochs: int = DEFAULTS["local-epochs"]
    batch_size: int = DEFAULTS["batch-size"]
    momentum: float = DEFAULTS["momentum"]
    weight_decay: float = 0.0
    block_dropout: float = 0.5


def make_model(
    blocks: int,
    width: int,
    classes: int,
    rank: int,
    readout: str = "cls",
    standardise: bool = False,
) -> AdaptedClassifier:
    """The federated model: adapters on every block and a head reading the last block's
    features through ``readout`` (``rank=0``: the head alone), its inputs standardised by
    each owner's statistics with ``standardise``."""
    return AdaptedClassifier(
        blocks, width, classes, rank=rank, readout=readout, standardise=standardise
    )


def _parameters(model: nn.Module | Iterable[nn.Parameter]) -> list[nn.Parameter]:
    return list(model.parameters() if isinstance(model, nn.Module) else model)


def get_vector(model: nn.Module | Iterable[nn.Parameter]) -> np.ndarray:
    """The trainable parameters as one float64 vector, in a fixed order: ``model.parameters()``
    (or the parameters given, e.g. only those that train)."""
    params = _parameters(model)
    return torch.nn.utils.parameters_to_vector(params).detach().double().numpy()


def set_vector(model: nn.Module | Iterable[nn.Parameter], vector: np.ndarray) -> None:
    """Loads what :func:`get_vector` gives back into the same parameters."""
    params = _parameters(model)
    size = sum(p.numel() for p in params)
    if np.shape(vector) != (size,):
        raise ValueError(f"expected a vector of {size} parameters, got shape {np.shape(vector)}")
    torch.nn.utils.vector_to_parameters(torch.as_tensor(vector, dtype=torch.float32), params)


def local_update(
    model: AdaptedClassifier,
    outputs: np.ndarray,
    labels: np.ndarray,
    lr: float,
    config: LocalTraining,
    *,
    seed: int = 0,
) -> np.ndarray:
    """Trains ``model`` in place from its current (global) weights; returns local - global."""
    start = get_vector(model)
    x = torch.as_tensor(outputs, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.long)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need as many labels as samples (> 0), got {len(x)} and {len(y)}")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    model.train()
    for _ in range(config.epochs):
        train_epoch(model, x, y, opt, config.batch_size, config.block_dropout, gen)
    model.eval()
    return get_vector(model) - start


def contribution(delta: np.ndarray, seen_blocks: np.ndarray, samples: int) -> np.ndarray:
    """What an owner puts into the secure sum: ``[n * delta, seen blocks, n]``."""
    seen = np.asarray(seen_blocks, dtype=np.float64)
    return np.concatenate([samples * np.asarray(delta, dtype=np.float64), seen, [samples]])


def check_sum(total: np.ndarray, contributors: int, blocks: int, update_bound: float) -> None:
    """Refuses a secure sum that ``contributors`` honest contributions cannot add up to: each
    entry of ``n * delta`` and the sample count are held to ``update_bound`` per owner (the
    fixed-point encoding refuses more), each seen-block flag to [0, 1]. A corrupted unmasking
    answer makes a sum far outside these bounds; applying it would wreck the model."""
    total = np.asarray(total, dtype=np.float64)
    limit = contributors * update_bound
    values, seen, samples = total[: -blocks - 1], total[-blocks - 1 : -1], total[-1]
    if not np.isfinite(total).all():
        raise ValueError("secure aggregation: the unmasked sum has NaN or infinite entries")
    worst = float(np.abs(values).max(initial=0.0))
    if worst > limit:
        raise ValueError(
            f"secure aggregation: the unmasked sum reaches {worst:.3g}, beyond what "
            f"{contributors} owners may contribute ({contributors} x {update_bound:g}); "
            "an unmasking answer was corrupted"
        )
    if ((seen < -0.5) | (seen > contributors + 0.5)).any() or not 0.5 <= samples <= limit:
        raise ValueError(
            f"secure aggregation: the sum's block flags or sample count ({samples:.3g}) are "
            f"not what {contributors} owners can contribute"
        )


def apply_sum(
    model: AdaptedClassifier, total: np.ndarray, optimizer: ServerOptimizer | None = None
) -> int:
    """Applies a secure sum of contributions to the global model; returns the samples it
    covers. The weighted mean update takes a step of ``optimizer`` (default: plain FedAvg).
    Blocks any contributor saw stay seen."""
    size = sum(p.numel() for p in model.parameters())
    blocks = model.blocks
    if np.shape(total) != (size + blocks + 1,):
        raise ValueError(f"expected {size + blocks + 1} values, got shape {np.shape(total)}")
    samples = round(float(total[-1]))
    if samples <= 0:
        raise ValueError(f"the sum covers {samples} samples")
    optimizer = optimizer or ServerOptimizer()
    set_vector(model, optimizer.step(get_vector(model), total[:size] / samples))
    model.seen_blocks.copy_(torch.as_tensor(total[size : size + blocks] > 0.5))
    return samples
