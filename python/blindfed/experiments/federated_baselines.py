"""Federated baselines: FedAvg of linear probing, LoRA and full fine-tuning of the teacher.

Plaintext and **not double-blind**: every owner holds a copy of the provider's teacher and
trains it on its own images in the clear, which is exactly what BlindFed avoids. They answer
"what would the same owners reach if the model were simply shared with them?", with the same
owners, the same rounds and the same secure aggregation as BlindFed's federation:

- each round, every owner copies the global trainable weights, trains them for ``local.epochs``
  epochs of SGD on its training images (momentum and batch size as BlindFed's owners) and
  contributes ``n * (local - global)`` and ``n`` through a SecAgg round
  (:func:`~blindfed.fl.secure_sum.secure_sum`);
- the server applies the weighted mean with the federation's server optimiser
  (:mod:`~blindfed.fl.server_opt`) and schedule;
- the final round's model is scored on the union of the owners' test images.

Methods (new heads and LoRA factors drawn from ``seed``; the teacher is never modified):
``fedavg_linear_probe`` (a new head on the frozen teacher's final-norm tokens read out as
``probe_readout`` says, features computed once), ``fedavg_lora`` (rank-r LoRA on every
block's ``qkv`` and ``proj`` plus a new head) and ``fedavg_full_finetune`` (every weight plus a
new head). Learning rates: see
:class:`FederatedBaselineConfig` (chosen on the validation split by ``blindfed tune``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from blindfed.experiments.baselines import _accuracy, _copy, _head_inputs, _new_head
from blindfed.fl.fedavg import LocalTraining, Schedule, get_vector, set_vector
from blindfed.fl.owner_data import OwnerData
from blindfed.fl.secure_sum import secure_sum
from blindfed.fl.server import FederationConfig
from blindfed.fl.server_opt import ServerOptimizer
from blindfed.fl.settings import DEFAULTS, UPDATE_BOUND, milestones
from blindfed.nn.adapter import check_readout
from blindfed.nn.lora import add_lora
from blindfed.nn.vit import ViT

__all__ = ["FEDERATED_METHODS", "FEDERATED_SETTING", "FederatedBaselineConfig", "run_federated"]

#: The federated baselines, in the order :func:`run_federated` runs them.
FEDERATED_METHODS: tuple[str, ...] = ("fedavg_linear_probe", "fedavg_lora", "fedavg_full_finetune")

#: What every federated baseline is (stored in each result).
FEDERATED_SETTING = "plaintext, federated (SecAgg), not double-blind"

#: Per method, the client learning rate (SGD) chosen on the validation split by
#: ``blindfed tune`` (:data:`blindfed.experiments.tune.FEDERATED_GRID`; figures in
#: docs/federation.md).
LEARNING_RATES: dict[str, float] = {
    "fedavg_linear_probe": 1.0,
    "fedavg_lora": 3e-2,
    "fedavg_full_finetune": 1e-2,
}

#: Per foundation model, the client learning rates chosen for it where they differ from
#: :data:`LEARNING_RATES` (``blindfed tune --model``; figures in docs/federation.md).
MODEL_LEARNING_RATES: dict[str, dict[str, float]] = {
    "dinov2-small": {"fedavg_linear_probe": 3.0},
}


@dataclass(frozen=True)
class FederatedBaselineConfig:
    """Rounds, schedule, local training and server optimiser of the federated baselines.

    ``lr`` maps a method to its client learning rate (missing methods take
    :data:`LEARNING_RATES`); ``milestones`` and ``gamma`` decay it as BlindFed's schedule does.
    """

    rounds: int = DEFAULTS["rounds"]
    lr: dict[str, float] = field(default_factory=dict)
    milestones: tuple[int, ...] = milestones(DEFAULTS["milestones"])
    gamma: float = DEFAULTS["gamma"]
    local: LocalTraining = field(default_factory=lambda: LocalTraining(block_dropout=0.0))
    server_optimizer: str = DEFAULTS["server-optimizer"]
    server_lr: float = DEFAULTS["server-lr"]
    server_momentum: float = DEFAULTS["server-momentum"]
    lora_rank: int = DEFAULTS["rank"]
    #: how the linear probe's head reads the teacher's final tokens (chosen on validation).
    probe_readout: str = "mean"
    update_bound: float = UPDATE_BOUND
    seed: int = DEFAULTS["seed"]
    #: torch's intra-op threads while the baselines run (restored after; None: left alone).
    #: One by default, as for the centralised baselines (:class:`blindfed.experiments.baselines.
    #: BaselineConfig`): on these small matrices more threads cost more than they gain.
    threads: int | None = 1

    def __post_init__(self) -> None:
        unknown = set(self.lr) - set(FEDERATED_METHODS)
        if unknown:
            raise ValueError(f"learning rates for unknown methods {sorted(unknown)}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {self.threads}")
        check_readout(self.probe_readout, "probe_readout")

    @classmethod
    def from_federation(cls, fed: FederationConfig, **kw: Any) -> FederatedBaselineConfig:
        """The baselines of a federation run with ``fed``: the same rounds, schedule shape,
        local training (without BlindFed's block dropout) and server optimiser; their own
        client learning rates."""
        return cls(
            rounds=fed.rounds,
            milestones=tuple(fed.milestones),
            gamma=fed.gamma,
            local=replace(fed.local, block_dropout=0.0),
            server_optimizer=fed.server_optimizer,
            server_lr=fed.server_lr,
            server_momentum=fed.server_momentum,
            seed=fed.seed,
            **kw,
        )

    def lr_of(self, method: str) -> float:
        return float(self.lr.get(method, LEARNING_RATES[method]))


def _label(method: str, config: FederatedBaselineConfig) -> str:
    return {
        "fedavg_linear_probe": "FedAvg of a linear probe on the frozen teacher (readout "
        f"{config.probe_readout})",
        "fedavg_lora": f"FedAvg of LoRA (rank {config.lora_rank}) on the teacher",
        "fedavg_full_finetune": "FedAvg of full fine-tuning of the teacher",
    }[method]


class _Task:
    """One method's trainable model and how it sees an owner's images."""

    def __init__(self, method: str, teacher: ViT, config: FederatedBaselineConfig) -> None:
        self.probe = method == "fedavg_linear_probe"
        self.readout = config.probe_readout
        if self.probe:
            self.teacher = teacher
            self.model: nn.Module = _new_head(teacher, config.seed, self.readout)
        else:
            model = _copy(teacher)
            model.head = _new_head(model, config.seed)
            if method == "fedavg_lora":
                add_lora(
                    model, config.lora_rank, generator=torch.Generator().manual_seed(config.seed)
                )
                model.head.requires_grad_(True)
            else:
                model.requires_grad_(True)
            self.model = model
        self.params = [p for p in self.model.parameters() if p.requires_grad]

    def inputs(self, images: np.ndarray) -> torch.Tensor:
        """What the trained model reads: the frozen features for a probe, else the images."""
        x = torch.as_tensor(images, dtype=torch.float32)
        return _head_inputs(self.teacher, x, self.readout) if self.probe else x

    def vector(self) -> np.ndarray:
        return get_vector(self.params)

    def load(self, vector: np.ndarray) -> None:
        set_vector(self.params, vector)


def _local(
    task: _Task,
    x: torch.Tensor,
    y: torch.Tensor,
    lr: float,
    local: LocalTraining,
    seed: int,
) -> np.ndarray:
    start = task.vector()
    opt = torch.optim.SGD(
        task.params, lr=lr, momentum=local.momentum, weight_decay=local.weight_decay
    )
    gen = torch.Generator().manual_seed(seed)
    task.model.train()
    for _ in range(local.epochs):
        for idx in torch.randperm(len(y), generator=gen).split(local.batch_size):
            loss = nn.functional.cross_entropy(task.model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    task.model.eval()
    return task.vector() - start


def run_federated(
    shares: Sequence[OwnerData],
    teacher: ViT,
    *,
    methods: Sequence[str] = FEDERATED_METHODS,
    config: FederatedBaselineConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Runs the federated baselines over the owners' ``shares``; returns, per method,
    ``{"accuracy", "trainable_parameters", "seconds", "label", "setting", "lr", "rounds"}``
    (accuracy: the final round's, on the union of the owners' test images)."""
    config = config or FederatedBaselineConfig()
    unknown = [m for m in methods if m not in FEDERATED_METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown methods {unknown}; available: {', '.join(FEDERATED_METHODS)}")
    if len(shares) < 2:
        raise ValueError(f"a federation needs at least 2 owners, got {len(shares)}")
    say = progress or (lambda _: None)
    previous_threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return {m: _run_one(m, shares, teacher, config, say) for m in methods}
    finally:
        torch.set_num_threads(previous_threads)


def _run_one(
    method: str,
    shares: Sequence[OwnerData],
    teacher: ViT,
    config: FederatedBaselineConfig,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """One federated baseline, from a new head (and LoRA factors) to the final round."""
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        task = _Task(method, teacher, config)
        data = [
            (task.inputs(d.train_images), torch.as_tensor(d.train_labels, dtype=torch.long))
            for d in shares
        ]
        lr = config.lr_of(method)
        schedule = Schedule(lr, config.rounds, config.milestones, config.gamma)
        server = ServerOptimizer(
            config.server_optimizer, lr=config.server_lr, momentum=config.server_momentum
        )
        vector = task.vector()
        for r in range(1, config.rounds + 1):
            contributions = {}
            for k, (x, y) in enumerate(data):
                task.load(vector)
                delta = _local(task, x, y, schedule.lr_at(r), config.local, seed=r * 1000 + k)
                contributions[k + 1] = np.concatenate([len(y) * delta, [len(y)]])
            total = secure_sum(contributions, bound=config.update_bound)
            vector = server.step(vector, total[:-1] / total[-1])
        task.load(vector)
        test_x = torch.cat([task.inputs(d.test_images) for d in shares])
        test_y = torch.as_tensor(np.concatenate([d.test_labels for d in shares]))
        acc = _accuracy(task.model, test_x, test_y)
    seconds = time.perf_counter() - t0
    say(f"{method}: {acc:.1f} % ({len(vector):,} trainable parameters, {seconds:.1f} s)")
    return {
        "accuracy": acc,
        "trainable_parameters": len(vector),
        "seconds": seconds,
        "label": _label(method, config),
        "setting": FEDERATED_SETTING,
        "lr": lr,
        "rounds": config.rounds,
    }
