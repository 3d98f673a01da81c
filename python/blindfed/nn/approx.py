"""Torch modules for the polynomial approximations, built on :class:`blindfed.approx.Approximation`.

A :class:`PolyApprox` wraps one approximation. On CPU tensors its forward and backward run in
the Rust core (the same steps as the encrypted evaluator, differentiated exactly); on other
devices, or with ``native=True``, it runs a torch-native path built from the same exported
coefficients (:meth:`Approximation.spec`). Its input range is a buffer, so it is saved with the
model and can be calibrated; :meth:`PolyApprox.start_observing` records what the inputs really span.

>>> import torch
>>> from blindfed.approx import Approximation
>>> from blindfed.nn.approx import PolyApprox
>>> exp = PolyApprox(Approximation.exp_chebyshev(-4.0, 2.0))
>>> x = torch.tensor([-1.0, 0.5], requires_grad=True)
>>> y = exp(x)
>>> y.sum().backward()
>>> bool(torch.allclose(y, x.exp(), atol=1e-6)), bool(torch.allclose(x.grad, x.exp(), atol=1e-4))
(True, True)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blindfed.approx import Approximation

__all__ = ["PolyApprox", "PolyGELU", "PolyLayerNorm", "PolySoftmax", "native_eval"]


class _CoreFunction(torch.autograd.Function):
    """f(x) with f'(x) from the Rust core, for CPU tensors (float32 or float64)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, approximation: Approximation) -> torch.Tensor:
        y, dy = approximation.value_and_derivative(x.detach().contiguous().numpy())
        ctx.save_for_backward(torch.from_numpy(dy))
        return torch.from_numpy(y)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (dy,) = ctx.saved_tensors
        return grad * dy, None


def _polynomial(p: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
    c = p["coefficients"]
    if p["basis"] == "power":
        y = torch.zeros_like(x)
        for ck in reversed(c):
            y = y * x + ck
        return y
    a, b = p["affine"]
    t = x * a + b
    b1, b2 = torch.zeros_like(x), torch.zeros_like(x)
    for ck in reversed(c[1:]):
        b1, b2 = 2.0 * t * b1 - b2 + ck, b1
    return t * b1 - b2 + c[0]


def _square(y: torch.Tensor, times: int) -> torch.Tensor:
    for _ in range(times):
        y = y * y
    return y


def native_eval(spec: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
    """The approximation described by ``spec`` in torch ops (any device, autograd-able).

    It takes the same steps as the Rust core with the same coefficients; only the floating
    point rounding of the device differs.
    """
    kind = spec["kind"]
    if kind in ("polynomial", "exp_taylor"):
        return _polynomial(spec, x)
    if kind == "exp_chebyshev":
        return _square(_polynomial(spec, x), spec["squarings"])
    if kind == "exp_squaring":
        r = spec["r"]
        return _square(x * (1.0 / 2.0**r) + 1.0, r)
    if kind == "goldschmidt":
        hi = spec["range"][1]
        e = x * (-1.0 / hi) + 1.0
        y = x * (-1.0 / (hi * hi)) + 2.0 / hi
        for _ in range(1, spec["iterations"]):
            e = e * e
            y = y * (e + 1.0)
        return y
    if kind == "inv_sqrt":
        h = x * -0.5
        y = _polynomial(spec["guess"], x)
        for _ in range(spec["newton_steps"]):
            y = y * 1.5 + (y * y) * (h * y)
        return y
    raise ValueError(f"unknown approximation kind {kind!r}")


def _exact(function: str, x: torch.Tensor) -> torch.Tensor:
    if function == "exp":
        return x.exp()
    if function == "reciprocal":
        return x.reciprocal()
    if function == "inv_sqrt":
        return x.rsqrt()
    if function == "gelu":
        return nn.functional.gelu(x)
    raise ValueError(f"unknown function {function!r}")


class PolyApprox(nn.Module):
    """One :class:`Approximation` as a module; its range is a saved, calibratable buffer.

    In training mode inputs are clamped to the range (see :meth:`forward`); in eval mode they
    are not, so the module computes exactly what the encrypted evaluator computes.

    Args:
        approximation: the approximation (its kind and degree stay; its range may change).
        native: always use the torch-native path, also on CPU.
    """

    range: torch.Tensor

    def __init__(self, approximation: Approximation, *, native: bool = False) -> None:
        super().__init__()
        if not isinstance(approximation, Approximation):
            raise TypeError(f"expected an Approximation, got {type(approximation).__name__}")
        self._approximation = approximation
        self._spec = approximation.spec()
        self.native = native
        self.exact = False
        self.register_buffer("range", torch.tensor(approximation.range, dtype=torch.float64))
        self._seen: list[float] | None = None
        self.out_of_range = 0

    @property
    def function(self) -> str:
        """What it approximates: ``exp``, ``reciprocal``, ``inv_sqrt`` or ``gelu``."""
        return self._spec["function"]

    @property
    def approximation(self) -> Approximation:
        """The approximation on the current range (refitted if the range buffer changed)."""
        lo, hi = (float(v) for v in self.range.tolist())
        if (lo, hi) != self._approximation.range:
            self.set_approximation(self._approximation.with_range(lo, hi))
        return self._approximation

    def set_range(self, lo: float, hi: float) -> None:
        """Refits the approximation to [lo, hi]."""
        self.set_approximation(self._approximation.with_range(float(lo), float(hi)))

    def set_approximation(self, approximation: Approximation) -> None:
        """Replaces the approximation (same function) and its range buffer."""
        spec = approximation.spec()
        if spec["function"] != self.function:
            raise ValueError(
                f"cannot replace a {self.function} approximation by {spec['function']}"
            )
        self._approximation, self._spec = approximation, spec
        with torch.no_grad():
            self.range.copy_(torch.tensor(approximation.range, dtype=torch.float64))

    def spec(self) -> dict[str, Any]:
        """The exported coefficients of the current approximation."""
        _ = self.approximation
        return self._spec

    def start_observing(self) -> None:
        """Records the min and max input, and counts inputs outside the range, from now on."""
        self._seen = [float("inf"), float("-inf")]
        self.out_of_range = 0

    def stop_observing(self) -> tuple[float, float] | None:
        """Stops recording; returns the (min, max) input seen, or None if there was none."""
        seen, self._seen = self._seen, None
        if seen is None or seen[0] > seen[1]:
            return None
        return seen[0], seen[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._seen is not None:
            with torch.no_grad():
                lo, hi = self.range.tolist()
                self._seen[0] = min(self._seen[0], float(x.min()))
                self._seen[1] = max(self._seen[1], float(x.max()))
                self.out_of_range += int(((x < lo) | (x > hi)).sum())
        if self.exact:
            return _exact(self.function, x)
        approximation = self.approximation
        if self.training:
            # A polynomial explodes outside its range (Goldschmidt's iterations overflow), and
            # one wild step of training would end the run with an inf. Clamping is the identity
            # on the range, so the trained function is the evaluated one wherever calibration
            # holds; in eval mode inputs pass unclamped, exactly as under encryption.
            lo, hi = self._approximation.range
            x = x.clamp(lo, hi)
        if x.device.type == "cpu" and not self.native and x.dtype in (torch.float32, torch.float64):
            return _CoreFunction.apply(x, approximation)
        return native_eval(self._spec, x)

    def extra_repr(self) -> str:
        lo, hi = self.range.tolist()
        mode = "exact" if self.exact else ("native" if self.native else "core")
        return f"{self._approximation.name}, range=({lo:.4g}, {hi:.4g}), {mode}"


def _module(a: Approximation | PolyApprox) -> PolyApprox:
    return a if isinstance(a, PolyApprox) else PolyApprox(a)


class PolySoftmax(nn.Module):
    """softmax over the last axis as ``exp(x) * reciprocal(sum exp(x))``, without the max shift.

    There is no max subtraction because the encrypted evaluator cannot compute a max; the exp
    approximation's calibrated range covers the raw scores instead.
    """

    def __init__(
        self, exp: Approximation | PolyApprox, reciprocal: Approximation | PolyApprox
    ) -> None:
        super().__init__()
        self.exp = _module(exp)
        self.reciprocal = _module(reciprocal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.exp(x)
        return e * self.reciprocal(e.sum(dim=-1, keepdim=True))


class PolyLayerNorm(nn.Module):
    """LayerNorm with ``1/sqrt(var + eps)`` approximated; parameters named as torch's.

    ``var`` is the population variance, as in :class:`torch.nn.LayerNorm`. Passing one
    :class:`PolyApprox` to two norms shares it (and its calibrated range) between them, as the
    encrypted block does for its two LayerNorms.
    """

    def __init__(self, width: int, inv_sqrt: Approximation | PolyApprox, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))
        self.eps = eps
        self.inv_sqrt = _module(inv_sqrt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=-1, keepdim=True)
        centred = x - mean
        var = (centred * centred).mean(dim=-1, keepdim=True) + self.eps
        return centred * self.inv_sqrt(var) * self.weight + self.bias


class PolyGELU(nn.Module):
    """The GELU approximation (the paper's Quad by default) as an activation module."""

    def __init__(self, gelu: Approximation | PolyApprox) -> None:
        super().__init__()
        self.gelu = _module(gelu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gelu(x)
