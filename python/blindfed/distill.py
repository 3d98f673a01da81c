"""Two-stage knowledge distillation of a teacher ViT into its FHE-friendly student.

Stage I (the first half of the epochs) is layer-wise: per-head attention-map MSE, hidden-state
MSE after every block and embedding MSE. Stage II is prediction distillation: the KL divergence
between temperature-softened predictions (``tau = 5``). The losses' values and gradients come
from the Rust core for CPU tensors (:func:`mse_loss`, :func:`soft_target_kl`); the torch
references (:func:`mse_loss_reference`, :func:`soft_target_kl_reference`) serve other devices
and the tests. Every epoch ends with a recalibration of the student's ranges and a checkpoint;
:func:`distill` resumes from the last checkpoint after an interruption.

>>> import torch
>>> s, t = torch.tensor([[1.0, 2.0]], requires_grad=True), torch.tensor([[0.0, 2.0]])
>>> loss = mse_loss(s, t)
>>> loss.backward()
>>> loss.item(), s.grad.tolist()
(0.5, [[1.0, 0.0]])
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from blindfed import _core
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


# ---- the losses ------------------------------------------------------------------------------


class _CoreLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, student: torch.Tensor, teacher: torch.Tensor, kind: str, tau: float):
        s = student.detach().contiguous().numpy()
        t = teacher.detach().to(student.dtype).contiguous().numpy()
        value, grad = _core.mse_loss(s, t) if kind == "mse" else _core.soft_target_kl(s, t, tau)
        ctx.save_for_backward(torch.from_numpy(grad))
        return torch.tensor(value, dtype=student.dtype)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return g * grad, None, None, None


def _on_core(student: torch.Tensor) -> bool:
    return student.device.type == "cpu" and student.dtype in (torch.float32, torch.float64)


def _check(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape != teacher.shape:
        raise ValueError(f"student shape {tuple(student.shape)} != teacher {tuple(teacher.shape)}")


def mse_loss_reference(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """mean((student - teacher)^2) in torch ops."""
    _check(student, teacher)
    return ((student - teacher.detach()) ** 2).mean()


def mse_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """mean((student - teacher)^2); the teacher side is a constant target."""
    _check(student, teacher)
    if _on_core(student):
        return _CoreLoss.apply(student, teacher, "mse", 0.0)
    return mse_loss_reference(student, teacher)


def soft_target_kl_reference(
    student: torch.Tensor, teacher: torch.Tensor, tau: float = 5.0
) -> torch.Tensor:
    """tau^2 * mean over rows of KL(softmax(teacher/tau) || softmax(student/tau)), in torch ops."""
    _check(student, teacher)
    log_q = torch.log_softmax(student / tau, dim=-1)
    log_p = torch.log_softmax(teacher.detach() / tau, dim=-1)
    rows = student.numel() // student.shape[-1]
    return tau * tau * (log_p.exp() * (log_p - log_q)).sum() / rows


def soft_target_kl(student: torch.Tensor, teacher: torch.Tensor, tau: float = 5.0) -> torch.Tensor:
    """Prediction distillation loss on logits shaped (..., classes)."""
    _check(student, teacher)
    if not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be finite and > 0, got {tau}")
    if _on_core(student):
        return _CoreLoss.apply(student, teacher, "kl", float(tau))
    return soft_target_kl_reference(student, teacher, tau)


def layerwise_loss(student: ViT, teacher: ViT, images: torch.Tensor) -> torch.Tensor:
    """Stage I: embeddings + per block (attention maps of every head + hidden states), MSE."""
    with torch.no_grad():
        t = teacher.features(images)
    s = student.features(images)
    loss = mse_loss(s.embeddings, t.embeddings)
    for sa, ta, sh, th in zip(s.attentions, t.attentions, s.hidden, t.hidden, strict=True):
        # The maps are (batch, heads, tokens, tokens): the mean over them is the per-head MSE
        # averaged over heads.
        loss = loss + mse_loss(sa, ta) + mse_loss(sh, th)
    return loss


def prediction_loss(
    student: ViT, teacher: ViT, images: torch.Tensor, tau: float = 5.0
) -> torch.Tensor:
    """Stage II: the softened KL between the teacher's and the student's predictions."""
    with torch.no_grad():
        t = teacher(images)
    return soft_target_kl(student(images), t, tau)


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 256):
    """Top-1 accuracy in percent."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(images), batch):
        correct += int((model(images[i : i + batch]).argmax(-1) == labels[i : i + batch]).sum())
    model.train(was_training)
    return 100.0 * correct / len(images)


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

    @property
    def stage1(self) -> int:
        return self.epochs // 2 if self.stage1_epochs is None else self.stage1_epochs

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if not 0 <= self.stage1 <= self.epochs:
            raise ValueError(f"stage1_epochs must be in 0..={self.epochs}, got {self.stage1}")


def _checkpoint_path(directory: Path) -> Path:
    return directory / "distill-checkpoint.pt"


def _save_checkpoint(directory: Path, blob: dict[str, Any]) -> None:
    # Write then rename: a crash mid-write leaves the previous checkpoint intact.
    path = _checkpoint_path(directory)
    tmp = path.with_suffix(".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)


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
    start = 0
    directory = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        path = _checkpoint_path(directory)
        if path.exists():
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if blob["config"] != asdict(c):
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
            start = len(history)
    calibration = [
        images[i : i + 256] for i in range(0, min(len(images), c.calibration_samples), 256)
    ]
    if start == 0:
        student.calibrate(calibration, margin=c.calibration_margin)
    bar = _progress(range(start, c.epochs), progress, total=c.epochs, initial=start)
    for epoch in bar:
        stage = 1 if epoch < c.stage1 else 2
        student.train()
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(c.seed + epoch))
        total, batches, t0 = 0.0, 0, time.perf_counter()
        for i in range(0, len(images), c.batch_size):
            x = images[order[i : i + c.batch_size]]
            if stage == 1:
                loss = layerwise_loss(student, teacher, x)
            else:
                loss = prediction_loss(student, teacher, x, c.tau)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {loss.item()} in epoch {epoch + 1}: an approximation's input "
                    "left its range; recalibrate with a larger margin or lower the learning rate"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
            batches += 1
        report = student.calibrate(calibration, margin=c.calibration_margin)
        record = {
            "epoch": epoch + 1,
            "stage": stage,
            "loss": total / max(batches, 1),
            "seconds": time.perf_counter() - t0,
            "out_of_range": sum(r["out_of_range"] for r in report.values()),
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
                },
            )
        if progress and hasattr(bar, "set_postfix"):
            bar.set_postfix(stage=stage, loss=f"{record['loss']:.4g}")
        if on_epoch is not None:
            on_epoch(epoch + 1, record)
    return history


def _progress(it: range, enabled: bool, total: int, initial: int):
    if not enabled:
        return it
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency of the torch extra
        return it
    return tqdm(it, total=total, initial=initial, desc="distill", unit="epoch")
