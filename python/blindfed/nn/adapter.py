"""Low-rank parallel adapters and the classification head an owner trains on block outputs.

g_l(z) = alpha * W_up GELU(W_down z);  h_l = g_l(b_l + h_{l-1}) + h_{l-1},  h_0 = 0; the head
reads LayerNorm(b_L + h_L) through a *readout* (:data:`READOUTS`): its class token (the paper's),
the mean of its patch tokens, or both side by side. Block outputs b_l are the frozen student's
(decrypted by the owner; zeros where a block was hidden), so no gradient goes through the
foundation model. ``rank=0`` gives linear probing: the head on b_L alone.

Why *standardise* (:meth:`AdaptedClassifier.standardise_by`): a real foundation model's block
outputs are not on one scale. In DINOv2-S's student's last block a few features reach 17 where
the median feature reaches 1, and no final LayerNorm of the model's reaches the owner, so the
head's own LayerNorm (per sample, across features) leaves it ill-conditioned: SGD moves the
large features and barely the rest. Standardising each feature by the owner's own statistics
(the class token apart from the patch tokens, which differ) puts every feature on one scale;
the statistics never leave the owner and are not part of what federated averaging adds up.

Why a mean readout can pay: the adapters act on every token, but with the class-token readout
only the class token's path reaches the head, so whatever the adapters could make of the
patch tokens the owner already holds is thrown away. Which readout the digits use is chosen on
a validation split (``blindfed tune``, part ``readout``).

>>> import torch
>>> from blindfed.nn.adapter import AdaptedClassifier
>>> model = AdaptedClassifier(blocks=3, width=8, classes=4, rank=2)
>>> model(torch.randn(5, 3, 7, 8)).shape
torch.Size([5, 4])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = [
    "READOUTS",
    "AdaptedClassifier",
    "ParallelAdapter",
    "TrainConfig",
    "accuracy",
    "check_readout",
    "read_out",
    "readout_width",
    "standardisation",
    "train",
    "train_epoch",
]


#: How a head may read a (batch, tokens, width) sequence whose token 0 is the class token:
#: the class token, the mean of the patch tokens, or both side by side.
READOUTS: tuple[str, ...] = ("cls", "mean", "cls+mean")


def check_readout(readout: str, name: str = "readout") -> str:
    """``readout`` if it is one of :data:`READOUTS`; a ``ValueError`` naming ``name`` if not."""
    if readout not in READOUTS:
        raise ValueError(f"unknown {name} {readout!r}; known: {', '.join(READOUTS)}")
    return readout


def readout_width(width: int, readout: str) -> int:
    """The features a head reads under ``readout`` from tokens of ``width``."""
    return width * (2 if check_readout(readout) == "cls+mean" else 1)


def read_out(tokens: torch.Tensor, readout: str) -> torch.Tensor:
    """(batch, tokens, width) -> (batch, :func:`readout_width`): the class token, the mean of
    the patch tokens (tokens 1 on), or both concatenated.

    >>> t = torch.arange(12.0).reshape(1, 3, 4)
    >>> read_out(t, "mean").tolist()
    [[6.0, 7.0, 8.0, 9.0]]
    """
    cls = tokens[:, 0]
    if check_readout(readout) == "cls":
        return cls
    if tokens.shape[1] < 2:
        raise ValueError(f"readout {readout!r} needs patch tokens, got {tokens.shape[1]} token")
    mean = tokens[:, 1:].mean(dim=1)
    return mean if readout == "mean" else torch.cat([cls, mean], dim=-1)


#: A feature's variance is floored at this fraction of its block's median variance (the median,
#: since a few features may vary a thousand times more than the rest), so a feature that is
#: (nearly) constant in the owner's data is not blown up by 1/std.
VARIANCE_FLOOR = 1e-6


def standardisation(outputs: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per block, the mean and 1/std of each feature of the class token and of the patch
    tokens (two rows each, shapes ``(blocks, 2, width)``), over the samples that show the block
    (a hidden block is all zeros); a block no sample shows keeps mean 0 and scale 1.

    >>> x = torch.zeros(4, 2, 3, 2)
    >>> x[:, 1] = torch.arange(4.0).view(4, 1, 1)   # block 0 hidden, and block 1 for sample 0
    >>> mean, scale = standardisation(x)
    >>> mean[1, 0].tolist(), round(float(scale[1, 1, 0]), 3), mean[0].abs().sum().item()
    ([2.0, 2.0], 1.225, 0.0)
    """
    x = torch.as_tensor(outputs, dtype=torch.float32)
    if x.ndim != 4 or x.shape[2] < 2:
        raise ValueError(
            f"expected block outputs (samples, blocks, tokens >= 2, width), got {tuple(x.shape)}"
        )
    blocks, width = x.shape[1], x.shape[3]
    mean = torch.zeros(blocks, 2, width)
    scale = torch.ones(blocks, 2, width)
    shown = x.abs().amax(dim=(2, 3)) > 0
    for block in range(blocks):
        seen = x[shown[:, block], block].double()
        if len(seen) < 2:
            continue
        for row, tokens in enumerate((seen[:, :1], seen[:, 1:])):
            var = tokens.var(dim=(0, 1), correction=0)
            floor = VARIANCE_FLOOR * float(var.median()) + torch.finfo(torch.float32).tiny
            mean[block, row] = tokens.mean(dim=(0, 1)).float()
            scale[block, row] = torch.rsqrt(var + floor).float()
    return mean, scale


class ParallelAdapter(nn.Module):
    """alpha * W_up GELU(W_down z); W_up starts at zero so training starts from the frozen
    features."""

    def __init__(self, width: int, rank: int, alpha: float = 1.0) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.alpha = alpha
        self.down = nn.Linear(width, rank)
        self.up = nn.Linear(rank, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.alpha * self.up(nn.functional.gelu(self.down(z)))


class AdaptedClassifier(nn.Module):
    """Adapters for every block and a head; input (batch, blocks, tokens, width)."""

    def __init__(
        self,
        blocks: int,
        width: int,
        classes: int,
        *,
        rank: int = 8,
        alpha: float = 1.0,
        readout: str = "cls",
        standardise: bool = False,
    ) -> None:
        super().__init__()
        self.blocks, self.width, self.readout = blocks, width, check_readout(readout)
        self.standardise = standardise
        self.adapters = nn.ModuleList(
            ParallelAdapter(width, rank, alpha) for _ in range(blocks if rank > 0 else 0)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(readout_width(width, readout), classes)
        # Blocks revealed somewhere in the training data; the others are read as hidden, so a
        # block revealed only at inference cannot feed adapters that never saw it.
        self.register_buffer("seen_blocks", torch.ones(blocks, dtype=torch.bool))
        # Buffers, not parameters: the owner's own statistics, never averaged or sent.
        self.register_buffer("input_mean", torch.zeros(blocks, 2, width))
        self.register_buffer("input_scale", torch.ones(blocks, 2, width))

    def standardise_by(self, mean: torch.Tensor, scale: torch.Tensor) -> None:
        """Takes the inputs' statistics (:func:`standardisation` of the owner's training
        outputs); the model standardises its inputs by them if built with
        ``standardise=True``."""
        if mean.shape != self.input_mean.shape or scale.shape != self.input_scale.shape:
            raise ValueError(
                f"expected statistics of {self.blocks} blocks of width {self.width}, "
                f"shape {tuple(self.input_mean.shape)}; got {tuple(mean.shape)}"
            )
        self.input_mean.copy_(mean)
        self.input_scale.copy_(scale)

    def _standardised(self, outputs: torch.Tensor) -> torch.Tensor:
        # Row 0 for the class token, row 1 for every patch token; hidden blocks stay zero.
        rows = torch.ones(outputs.shape[2], dtype=torch.long, device=outputs.device)
        rows[0] = 0
        shown = (outputs.abs().amax(dim=(2, 3), keepdim=True) > 0).to(outputs.dtype)
        return (outputs - self.input_mean[:, rows]) * self.input_scale[:, rows] * shown

    def forward(self, outputs: torch.Tensor) -> torch.Tensor:
        if outputs.ndim != 4 or outputs.shape[1] != self.blocks or outputs.shape[3] != self.width:
            raise ValueError(
                f"expected block outputs (batch, {self.blocks}, tokens, {self.width}), "
                f"got {tuple(outputs.shape)}"
            )
        if self.standardise:
            outputs = self._standardised(outputs)
        outputs = outputs * self.seen_blocks.view(1, -1, 1, 1)
        h = torch.zeros_like(outputs[:, 0])
        for index, adapter in enumerate(self.adapters):
            h = adapter(outputs[:, index] + h) + h
        return self.head(read_out(self.norm(outputs[:, -1] + h), self.readout))


@dataclass
class TrainConfig:
    """``block_dropout``: the chance that each block but the last is zeroed for a sample in a
    step. The provider draws which blocks to reveal per batch, so a batch seen at inference may
    show other blocks than the training batches did; dropping blocks in training keeps the
    adapters from leaning on any one of them."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    block_dropout: float = 0.5
    seed: int = 0


def train(
    model: AdaptedClassifier,
    outputs: np.ndarray,
    labels: np.ndarray,
    config: TrainConfig | None = None,
) -> list[float]:
    """Trains adapters and head on cached block outputs (taking the statistics of a
    ``standardise`` model from them); returns the loss per epoch."""
    config = config or TrainConfig()
    x = torch.as_tensor(outputs, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.long)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} samples but {len(y)} labels")
    if not 0.0 <= config.block_dropout < 1.0:
        raise ValueError(f"block_dropout must be in [0, 1), got {config.block_dropout}")
    model.seen_blocks.copy_(x.abs().amax(dim=(0, 2, 3)) > 0)
    if model.standardise:
        model.standardise_by(*standardisation(x))
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    model.train()
    losses = [
        train_epoch(model, x, y, opt, config.batch_size, config.block_dropout, gen)
        for _ in range(config.epochs)
    ]
    model.eval()
    return losses


def train_epoch(
    model: AdaptedClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    opt: torch.optim.Optimizer,
    batch_size: int,
    block_dropout: float,
    gen: torch.Generator,
) -> float:
    """One shuffled pass over (x, y) with block dropout; returns the mean loss."""
    total = 0.0
    for idx in torch.randperm(len(x), generator=gen).split(batch_size):
        keep = torch.rand(len(idx), x.shape[1], 1, 1, generator=gen) >= block_dropout
        keep[:, -1] = True
        loss = nn.functional.cross_entropy(model(x[idx] * keep), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
    return total / len(x)


@torch.no_grad()
def accuracy(model: AdaptedClassifier, outputs: np.ndarray, labels: np.ndarray) -> float:
    """Percentage of correct predictions."""
    model.eval()
    pred = model(torch.as_tensor(outputs, dtype=torch.float32)).argmax(1).numpy()
    return float((pred == np.asarray(labels)).mean() * 100)
