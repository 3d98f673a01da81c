"""A pre-LayerNorm Vision Transformer whose parameter names are timm's.

The same modules build the teacher (exact softmax, GELU and LayerNorm) and the FHE-friendly
student (their polynomial approximations, :mod:`blindfed.nn.approx`), so a teacher's state dict
loads into its student unchanged, and timm's ``VisionTransformer`` state dicts load directly.

>>> import torch
>>> from blindfed.nn.vit import ViT, ViTConfig
>>> config = ViTConfig(image_size=28, patch_size=7, width=32, depth=2, heads=2, mlp=64)
>>> model = ViT(config)
>>> model(torch.zeros(3, 1, 28, 28)).shape
torch.Size([3, 10])
>>> config.tokens
17
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["Attention", "Block", "Features", "Functions", "Mlp", "ViT", "ViTConfig"]


@dataclass(frozen=True)
class ViTConfig:
    """The architecture: image and patch size, width, depth, heads, MLP width, classes."""

    image_size: int = 28
    patch_size: int = 7
    in_chans: int = 1
    num_classes: int = 10
    width: int = 64
    depth: int = 4
    heads: int = 4
    mlp: int = 128
    eps: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "in_chans", "width", "depth", "heads", "mlp"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.width % self.heads:
            raise ValueError(f"width {self.width} does not split into {self.heads} heads")

    @property
    def tokens(self) -> int:
        """Patches plus the class token."""
        return (self.image_size // self.patch_size) ** 2 + 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ViTConfig:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


@dataclass
class Functions:
    """Factories for the non-linear layers of block ``i``: the teacher's exact ones by default.

    The student passes factories that build polynomial modules with per-block approximations.
    """

    norm: Callable[[int, int, float], nn.Module] = field(
        default=lambda block, width, eps: nn.LayerNorm(width, eps=eps)
    )
    softmax: Callable[[int], nn.Module] = field(default=lambda block: nn.Softmax(dim=-1))
    act: Callable[[int], nn.Module] = field(default=lambda block: nn.GELU())


@dataclass
class Features:
    """What a forward pass can return besides the logits (for distillation and export)."""

    embeddings: torch.Tensor
    hidden: list[torch.Tensor]
    attentions: list[torch.Tensor]
    logits: torch.Tensor


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, softmax: nn.Module) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (width // heads) ** -0.5
        self.qkv = nn.Linear(width, 3 * width)
        self.softmax = softmax
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the output and the attention maps, shaped (batch, heads, tokens, tokens)."""
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        maps = self.softmax((q @ k.transpose(-2, -1)) * self.scale)
        out = (maps @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(out), maps


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int, act: nn.Module) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = act
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """x + attn(norm1(x)), then + mlp(norm2(.)): the block the encrypted evaluator runs."""

    def __init__(self, config: ViTConfig, index: int, functions: Functions) -> None:
        super().__init__()
        c = config
        self.norm1 = functions.norm(index, c.width, c.eps)
        self.attn = Attention(c.width, c.heads, functions.softmax(index))
        self.norm2 = functions.norm(index, c.width, c.eps)
        self.mlp = Mlp(c.width, c.mlp, functions.act(index))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, maps = self.attn(self.norm1(x))
        x = x + a
        return x + self.mlp(self.norm2(x)), maps


class ViT(nn.Module):
    """Patch embedding, class token, learned positions, blocks, final norm, linear head."""

    def __init__(self, config: ViTConfig, functions: Functions | None = None) -> None:
        super().__init__()
        c = self.config = config
        f = functions or Functions()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(
            c.in_chans, c.width, kernel_size=c.patch_size, stride=c.patch_size
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.width))
        self.pos_embed = nn.Parameter(torch.randn(1, c.tokens, c.width) * 0.02)
        self.blocks = nn.ModuleList(Block(c, i, f) for i in range(c.depth))
        self.norm = f.norm(c.depth, c.width, c.eps)
        self.head = nn.Linear(c.width, c.num_classes)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Images (batch, channels, height, width) to tokens (batch, tokens, width)."""
        c = self.config
        expected = (c.in_chans, c.image_size, c.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"expected images shaped (batch, {expected}), got {tuple(images.shape)}"
            )
        x = self.patch_embed.proj(images).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1) + self.pos_embed

    def head_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """The classifier on the class token after the final norm."""
        return self.head(self.norm(tokens)[:, 0])

    def features(self, images: torch.Tensor) -> Features:
        x = self.embed(images)
        embeddings, hidden, attentions = x, [], []
        for block in self.blocks:
            x, maps = block(x)
            hidden.append(x)
            attentions.append(maps)
        return Features(embeddings, hidden, attentions, self.head_logits(x))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.embed(images)
        for block in self.blocks:
            x, _ = block(x)
        return self.head_logits(x)
