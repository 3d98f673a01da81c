"""The distillation losses, computed in the Rust core with exact gradients (each has a pure
torch ``*_reference`` twin the tests hold it to), the two stages' combinations, and accuracy.
:mod:`blindfed.distill` re-exports them."""

from __future__ import annotations

import math
from typing import Any

import torch

from blindfed import _core
from blindfed.nn.vit import ViT

__all__ = [
    "accuracy",
    "layerwise_loss",
    "mse_loss",
    "mse_loss_reference",
    "prediction_loss",
    "soft_target_kl",
    "soft_target_kl_reference",
]


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


def layerwise_loss(
    student: ViT, teacher: ViT, images: torch.Tensor, *, teacher_forced: bool = False
) -> torch.Tensor:
    """Stage I: embeddings + per block (attention maps of every head + hidden states), MSE.

    ``teacher_forced``: every student block gets the teacher's input to that block (no
    error compounds from block to block), the stable start a cheap family needs.
    """
    with torch.no_grad():
        t = teacher.features(images)
    if not teacher_forced:
        s = student.features(images)
        loss = mse_loss(s.embeddings, t.embeddings)
        pairs = zip(s.attentions, t.attentions, s.hidden, t.hidden, strict=True)
    else:
        start = getattr(student, "start_pass", None)
        if start is not None:
            start()
        embeddings = student.embed(images)
        loss = mse_loss(embeddings, t.embeddings)
        inputs = [t.embeddings, *t.hidden[:-1]]
        outs = [block(x) for block, x in zip(student.blocks, inputs, strict=True)]
        pairs = (
            (maps, ta, h, th)
            for (h, maps), ta, th in zip(outs, t.attentions, t.hidden, strict=True)
        )
    for sa, ta, sh, th in pairs:
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
