"""Two-stage knowledge distillation of a teacher ViT into its FHE-friendly student.

Stage I (the first half of the epochs) is layer-wise: per-head attention-map MSE, hidden-state
MSE after every block and embedding MSE. Stage II is prediction distillation: the KL divergence
between temperature-softened predictions (``tau = 5``). The losses' values and gradients come
from the Rust core for CPU tensors (:func:`mse_loss`, :func:`soft_target_kl`); the torch
references (:func:`mse_loss_reference`, :func:`soft_target_kl_reference`) serve other devices
and the tests. Every epoch ends with a recalibration of the student's ranges and a checkpoint;
:func:`distill` resumes from the last checkpoint after an interruption.

What the cheap families need on top: their learned constants start from the data (affine
statistics, a power's shift fitted to the teacher's maps, constant denominators at the mean
row sum), a warm start trains those constants alone for the first epoch(s), and a range
penalty keeps the inputs of every narrow chain (1/x of the row sums, 1/sqrt of the variances)
within ``range_ratio`` of their geometric middle, so the planner needs fewer iterations.

>>> import torch
>>> s, t = torch.tensor([[1.0, 2.0]], requires_grad=True), torch.tensor([[0.0, 2.0]])
>>> loss = mse_loss(s, t)
>>> loss.backward()
>>> loss.item(), s.grad.tolist()
(0.5, [[1.0, 0.0]])
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from blindfed.atomic import write_atomically
from blindfed.losses import (
    accuracy,
    layerwise_loss,
    mse_loss,
    mse_loss_reference,
    prediction_loss,
    soft_target_kl,
    soft_target_kl_reference,
)
from blindfed.nn.student import Student
from blindfed.nn.vit import ViT

__all__ = [
    "DistillConfig",
    "accuracy",
    "distill",
    "layerwise_loss",
    "mse_loss",
    "mse_loss_reference",
    "prediction_loss",
    "soft_target_kl",
    "soft_target_kl_reference",
]


# ---- the training loop -----------------------------------------------------------------------


@dataclass(frozen=True)
class DistillConfig:
    """Distillation hyper-parameters (the paper: 30 epochs, half of them layer-wise, tau 5)."""

    epochs: int = 30
    stage1_epochs: int | None = None
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.0
    tau: float = 5.0
    calibration_samples: int = 4096
    calibration_margin: float = 0.2
    seed: int = 0
    #: Epochs at the start that train only the families' constants (shifts, denominators,
    #: affine norms' weights), with the layer-wise loss; 0 for none.
    warm_start_epochs: int = 1
    #: Epochs at the start whose layer-wise loss feeds every block the teacher's input (None:
    #: the first third of stage I).
    teacher_forced_epochs: int | None = None
    #: The width (hi / lo) the range penalty allows a narrow chain's inputs; None for no penalty.
    range_ratio: float | None = 64.0
    range_weight: float = 0.1
    #: A batch loss this many times the running mean of its phase (or not finite) rolls the
    #: epoch back and halves the learning rate; None to fail instead.
    divergence_ratio: float | None = 10.0
    #: Roll-backs allowed in one run before distillation gives up.
    max_rollbacks: int = 3

    @property
    def stage1(self) -> int:
        return self.epochs // 2 if self.stage1_epochs is None else self.stage1_epochs

    @property
    def teacher_forced(self) -> int:
        """Epochs of teacher-forced layer-wise training."""
        if self.teacher_forced_epochs is None:
            return self.stage1 // 3
        return self.teacher_forced_epochs

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if not 0 <= self.stage1 <= self.epochs:
            raise ValueError(f"stage1_epochs must be in 0..={self.epochs}, got {self.stage1}")
        for name, value in (
            ("warm_start_epochs", self.warm_start_epochs),
            ("teacher_forced_epochs", self.teacher_forced),
        ):
            if not 0 <= value <= self.stage1:
                raise ValueError(
                    f"{name} must be in 0..={self.stage1} (within stage I), got {value}"
                )
        if self.range_ratio is not None and not self.range_ratio > 1:
            raise ValueError(f"range_ratio must be > 1 or None, got {self.range_ratio}")
        if self.divergence_ratio is not None and not self.divergence_ratio > 1:
            raise ValueError(f"divergence_ratio must be > 1 or None, got {self.divergence_ratio}")
        if self.max_rollbacks < 0:
            raise ValueError(f"max_rollbacks must be >= 0, got {self.max_rollbacks}")


def _checkpoint_path(directory: Path) -> Path:
    return directory / "distill-checkpoint.pt"


def _save_checkpoint(directory: Path, blob: dict[str, Any]) -> None:
    # Write then rename: a crash mid-write leaves the previous checkpoint intact.
    write_atomically(_checkpoint_path(directory), lambda f: torch.save(blob, f))


def distill(
    teacher: ViT,
    student: Student,
    images: torch.Tensor,
    *,
    config: DistillConfig | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Distils ``teacher`` into ``student`` on the auxiliary ``images`` (no labels needed).

    With ``checkpoint_dir``, the student, optimiser and history are saved after every epoch and
    a later call with the same directory and config resumes after the last finished epoch.
    Returns one record per epoch: stage, mean loss, seconds and out-of-range inputs.
    """
    c = config or DistillConfig()
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW(student.parameters(), lr=c.lr, weight_decay=c.weight_decay)
    history: list[dict[str, float]] = []
    targets: dict[str, tuple[float, float]] = {}
    start = 0
    directory = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        path = _checkpoint_path(directory)
        if path.exists():
            blob = torch.load(path, map_location="cpu", weights_only=True)
            # Fields added since the checkpoint was written take today's values.
            if {**asdict(c), **blob["config"]} != asdict(c):
                raise ValueError(
                    f"checkpoint in {directory} was made with another config: {blob['config']}"
                )
            restored = Student.rebuild(blob["description"], blob["student"])
            student.load_state_dict(restored.state_dict())
            for (_, mine), (_, theirs) in zip(
                student.approximations(), restored.approximations(), strict=True
            ):
                mine.set_approximation(theirs.approximation)
            optimizer.load_state_dict(blob["optimizer"])
            history = list(blob["history"])
            targets = {k: tuple(v) for k, v in blob.get("targets", {}).items()}
            start = len(history)
    calibration = [
        images[i : i + 256] for i in range(0, min(len(images), c.calibration_samples), 256)
    ]
    if start == 0:
        student.calibrate(calibration, margin=c.calibration_margin, constants=True, strict=False)
        targets = _range_targets(student, c.range_ratio)
    narrow = dict(student.approximations())
    for name, target in targets.items():
        narrow[name].keep_in(target)
    family = {id(p) for p in student.family_parameters()}
    watch = _DivergenceWatch(c.divergence_ratio)
    rollbacks = int(history[-1].get("rollbacks", 0)) if history else 0
    bar = _progress(range(start, c.epochs), progress, total=c.epochs, initial=start)
    try:
        for epoch in bar:
            stage = 1 if epoch < c.stage1 else 2
            # A spec without constants (exp over the row sum, LayerNorm) has no warm start.
            warm = epoch < c.warm_start_epochs and bool(family)
            forced = stage == 1 and epoch < c.teacher_forced
            saved = _snapshot(student, optimizer)
            while True:
                watch.enter((warm, stage, forced))
                try:
                    total, batches, seconds = _train_epoch(
                        student,
                        teacher,
                        images,
                        optimizer,
                        c,
                        epoch,
                        stage,
                        warm,
                        forced,
                        narrow,
                        targets,
                        family,
                        watch,
                    )
                    break
                except _DivergedError as diverged:
                    rollbacks += 1
                    if rollbacks > c.max_rollbacks:
                        raise FloatingPointError(
                            f"{diverged} in epoch {epoch + 1}, after {c.max_rollbacks} "
                            "roll-backs with halved learning rates; recalibrate with a larger "
                            "margin or lower the learning rate"
                        ) from None
                    _restore(student, optimizer, saved)
                    for group in optimizer.param_groups:
                        group["lr"] *= 0.5
                    watch.forget()
                    if progress:
                        bar.write(
                            f"{diverged} in epoch {epoch + 1}: rolled back, learning rate "
                            f"halved to {optimizer.param_groups[0]['lr']:.3g}"
                        )
            report = student.calibrate(calibration, margin=c.calibration_margin, strict=False)
            record = {
                "epoch": epoch + 1,
                "stage": 0 if warm else stage,
                "loss": total / max(batches, 1),
                "seconds": seconds,
                "out_of_range": sum(r["out_of_range"] for r in report.values()),
                "lr": optimizer.param_groups[0]["lr"],
                "rollbacks": rollbacks,
            }
            history.append(record)
            if directory is not None:
                _save_checkpoint(
                    directory,
                    {
                        "config": asdict(c),
                        "description": student.describe(),
                        "student": student.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "history": history,
                        "targets": {k: list(v) for k, v in targets.items()},
                    },
                )
            if progress and hasattr(bar, "set_postfix"):
                bar.set_postfix(stage=record["stage"], loss=f"{record['loss']:.4g}")
            if on_epoch is not None:
                on_epoch(epoch + 1, record)
    finally:
        for m in narrow.values():
            m.keep_in(None)
    return history


def _train_epoch(
    student: Student,
    teacher: ViT,
    images: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    c: DistillConfig,
    epoch: int,
    stage: int,
    warm: bool,
    forced: bool,
    narrow: dict[str, Any],
    targets: dict[str, tuple[float, float]],
    family: set[int],
    watch: _DivergenceWatch,
) -> tuple[float, int, float]:
    """One pass over ``images``; returns the summed loss, the batches and the seconds."""
    student.train()
    student.pattern_rng.seed(c.seed * 1_000_003 + epoch)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(c.seed + epoch))
    total, batches, t0 = 0.0, 0, time.perf_counter()
    for i in range(0, len(images), c.batch_size):
        x = images[order[i : i + c.batch_size]]
        for n in targets:
            narrow[n].penalty = None
        if stage == 1:
            loss = layerwise_loss(student, teacher, x, teacher_forced=forced)
        else:
            loss = prediction_loss(student, teacher, x, c.tau)
        penalty = sum(
            (narrow[n].penalty for n in targets if narrow[n].penalty is not None),
            torch.zeros((), dtype=loss.dtype),
        )
        loss = loss + c.range_weight * penalty.to(loss.dtype)
        watch.observe(loss.item())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if warm:
            # The warm start moves only the families' constants.
            for p in student.parameters():
                if id(p) not in family:
                    p.grad = None
        optimizer.step()
        total += loss.item()
        batches += 1
    return total, batches, time.perf_counter() - t0


class _DivergedError(Exception):
    pass


class _DivergenceWatch:
    """Flags a batch loss that is not finite or ``ratio`` times its phase's running mean.

    A phase is a run of epochs with the same loss (warm start, teacher-forced, layer-wise,
    prediction): losses change scale between phases, so each starts its own mean, and the first
    batches of a phase only feed it.
    """

    WARMUP_BATCHES = 20
    MOMENTUM = 0.9

    def __init__(self, ratio: float | None):
        self.ratio = ratio
        self.phase: object = None
        self.forget()

    def forget(self) -> None:
        self.mean, self.seen = 0.0, 0

    def enter(self, phase: object) -> None:
        if phase != self.phase:
            self.phase = phase
            self.forget()

    def observe(self, loss: float) -> None:
        if not math.isfinite(loss):
            if self.ratio is None:
                raise FloatingPointError(
                    f"loss became {loss}: an approximation's input left its range; recalibrate "
                    "with a larger margin or lower the learning rate"
                )
            raise _DivergedError(f"loss became {loss}")
        if (
            self.ratio is not None
            and self.seen >= self.WARMUP_BATCHES
            and loss > self.ratio * self.mean
        ):
            raise _DivergedError(f"loss jumped to {loss:.4g} ({self.mean:.4g} on average before)")
        m = self.MOMENTUM
        self.mean = loss if self.seen == 0 else m * self.mean + (1 - m) * loss
        self.seen += 1


def _snapshot(student: Student, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    return {
        "student": copy.deepcopy(student.state_dict()),
        "approximations": [m.approximation for _, m in student.approximations()],
        "optimizer": copy.deepcopy(optimizer.state_dict()),
    }


def _restore(student: Student, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    student.load_state_dict(saved["student"])
    for (_, module), approximation in zip(
        student.approximations(), saved["approximations"], strict=True
    ):
        module.set_approximation(approximation)
    optimizer.load_state_dict(saved["optimizer"])


def _range_targets(student: Student, ratio: float | None) -> dict[str, tuple[float, float]]:
    """The interval the range penalty keeps each narrow chain's inputs in: ``ratio`` wide
    (hi / lo) around the geometric middle of its calibrated range."""
    if ratio is None:
        return {}
    out = {}
    for name, m in student.approximations():
        if m.function in ("reciprocal", "inv_sqrt"):
            lo, hi = m.range.tolist()
            middle = math.sqrt(lo * hi)
            out[name] = (middle / math.sqrt(ratio), middle * math.sqrt(ratio))
    return out


def _progress(it: range, enabled: bool, total: int, initial: int):
    if not enabled:
        return it
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency of the torch extra
        return it
    return tqdm(it, total=total, initial=initial, desc="distill", unit="epoch")
