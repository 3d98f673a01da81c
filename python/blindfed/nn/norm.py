"""The student's normalisations: :class:`PolyLayerNorm` (LayerNorm with its 1/sqrt
approximated) and :class:`AffineNorm` (a distilled affine map whose statistics fold into the
next weights: no levels). Either can take its input already normalised by the owner, who holds
a revealed block's output in the clear."""

from __future__ import annotations

import torch
from torch import nn

from blindfed.approx import Approximation
from blindfed.nn.approx import PolyApprox, poly_module

__all__ = ["AffineNorm", "PolyLayerNorm"]


def _layer_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) per row: what an owner computes in the clear."""
    mean = x.mean(dim=-1, keepdim=True)
    centred = x - mean
    return centred * ((centred * centred).mean(dim=-1, keepdim=True) + eps).rsqrt()


class PolyLayerNorm(nn.Module):
    """LayerNorm with ``1/sqrt(var + eps)`` approximated; parameters named as torch's.

    ``var`` is the population variance, as in :class:`torch.nn.LayerNorm`. Passing one
    :class:`PolyApprox` to two norms shares it (and its calibrated range) between them, as the
    encrypted block does for its two LayerNorms. With :attr:`owner_normalised` set, the input
    is normalised exactly (the owner did it in the clear) and only the affine part is applied.
    """

    def __init__(self, width: int, inv_sqrt: Approximation | PolyApprox, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))
        self.eps = eps
        self.inv_sqrt = poly_module(inv_sqrt)
        self.owner_normalised = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.owner_normalised:
            return _layer_norm(x, self.eps) * self.weight + self.bias
        mean = x.mean(dim=-1, keepdim=True)
        centred = x - mean
        var = (centred * centred).mean(dim=-1, keepdim=True) + self.eps
        return centred * self.inv_sqrt(var) * self.weight + self.bias


class AffineNorm(nn.Module):
    """A per-feature affine map in place of LayerNorm (BatchNorm-like, distilled):
    ``(x - mean) * inv_std * weight + bias``.

    ``mean`` and ``inv_std`` are buffers calibrated once on the auxiliary data; ``weight`` and
    ``bias`` (LayerNorm's names, so a teacher's state dict loads) are learned. The whole map
    folds into the next linear layer: it costs the encrypted block nothing. In exact mode, or
    with :attr:`owner_normalised` set, it is the exact LayerNorm with the same weight and bias.
    """

    mean: torch.Tensor
    inv_std: torch.Tensor

    def __init__(self, width: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))
        self.eps = eps
        self.register_buffer("mean", torch.zeros(width, dtype=torch.float64))
        self.register_buffer("inv_std", torch.ones(width, dtype=torch.float64))
        self.exact = False
        self.owner_normalised = False
        self._moments: list[torch.Tensor] | None = None

    def start_observing(self) -> None:
        """Accumulates the per-feature mean and variance of the inputs from now on."""
        self._moments = [torch.zeros(3, self.mean.numel(), dtype=torch.float64)]

    def stop_observing(self, *, calibrate: bool) -> None:
        """Stops accumulating; with ``calibrate``, sets ``mean`` and ``inv_std`` from it."""
        moments, self._moments = self._moments, None
        if not calibrate or moments is None or float(moments[0][0, 0]) == 0:
            return
        n, s, s2 = moments[0]
        mean = s / n
        var = (s2 / n - mean * mean).clamp_min(0.0)
        with torch.no_grad():
            self.mean.copy_(mean)
            self.inv_std.copy_((var + self.eps).rsqrt())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._moments is not None:
            with torch.no_grad():
                rows = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
                self._moments[0] += torch.stack(
                    [torch.full_like(rows[0], len(rows)), rows.sum(0), (rows * rows).sum(0)]
                )
        if self.exact or self.owner_normalised:
            return _layer_norm(x, self.eps) * self.weight + self.bias
        scale = self.inv_std.to(x.dtype) * self.weight
        return (x - self.mean.to(x.dtype)) * scale + self.bias

    def stats(self) -> tuple[list[float], list[float]]:
        """(mean, inv_std) as the encrypted block takes them."""
        return self.mean.tolist(), self.inv_std.tolist()
