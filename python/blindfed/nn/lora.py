"""LoRA (Hu et al. 2021): low-rank trainable updates beside frozen linear layers, and a ViT
with them on its attention (the LoRA baselines, centralised and federated)."""

from __future__ import annotations

import math

import torch
from torch import nn

from blindfed.nn.vit import ViT

__all__ = ["LoRALinear", "add_lora"]


class LoRALinear(nn.Module):
    """``base(x) + (alpha / rank) * x A^T B^T`` with ``base`` frozen (Hu et al. 2021).

    ``A`` (rank, in) is drawn like an ``nn.Linear`` weight (Kaiming-uniform), ``B`` (out, rank)
    starts at zero, so the wrapped layer starts exactly equal to ``base``. ``alpha`` defaults
    to ``rank`` (scale 1). The base layer is frozen in place (``requires_grad_(False)``): wrap
    a copy if the original must keep training.

    >>> import torch
    >>> base = torch.nn.Linear(4, 3)
    >>> lora = LoRALinear(base, rank=2)
    >>> x = torch.randn(5, 4)
    >>> bool(torch.equal(lora(x), base(x))), [p.shape for p in lora.parameters() if p.requires_grad]
    (True, [torch.Size([2, 4]), torch.Size([3, 2])])
    """

    def __init__(
        self,
        base: nn.Linear,
        rank: int = 8,
        alpha: float | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank!r}")
        self.base = base.requires_grad_(False)
        self.rank = rank
        self.alpha = float(rank if alpha is None else alpha)
        self.scale = self.alpha / rank
        weight = base.weight
        a = torch.empty(rank, base.in_features, dtype=weight.dtype)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        self.lora_a = nn.Parameter(a.to(weight.device))
        self.lora_b = nn.Parameter(
            torch.zeros(base.out_features, rank, dtype=weight.dtype, device=weight.device)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * ((x @ self.lora_a.T) @ self.lora_b.T)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}"


def add_lora(
    model: ViT,
    rank: int = 8,
    alpha: float | None = None,
    *,
    generator: torch.Generator | None = None,
) -> ViT:
    """Freezes ``model`` and wraps every block's ``attn.qkv`` and ``attn.proj`` in a
    :class:`LoRALinear`, in place; returns ``model``. Only the LoRA factors are left trainable.
    """
    model.requires_grad_(False)
    for block in model.blocks:
        attn = block.attn
        attn.qkv = LoRALinear(attn.qkv, rank, alpha, generator=generator)
        attn.proj = LoRALinear(attn.proj, rank, alpha, generator=generator)
    return model
