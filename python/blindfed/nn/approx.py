"""Torch modules for the student's families, built on :class:`blindfed.approx.Approximation`.

A :class:`PolyApprox` wraps one approximation. On CPU tensors its forward and backward run in
the Rust core (the same steps as the encrypted evaluator, differentiated exactly); on other
devices, or with ``native=True``, it runs a torch-native interpreter of the same exported steps
(:meth:`Approximation.steps`). Its input range is a buffer, so it is saved with the model and
can be calibrated; :meth:`PolyApprox.start_observing` records what the inputs really span.
:class:`PowerApprox` is a power numerator ``(x + c)^p`` whose shift ``c`` is learned.

The block's families: :class:`PolySoftmax` (a numerator over the row sum through 1/x, or over a
constant learned per head), :class:`PolyGELU`, and the normalisations of
:mod:`blindfed.nn.norm`.

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

import math
from typing import Any

import torch
from torch import nn

from blindfed.approx import Approximation

__all__ = ["PolyApprox", "PolyGELU", "PolySoftmax", "PowerApprox", "native_eval", "poly_module"]


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


def _power(y: torch.Tensor, p: int) -> torch.Tensor:
    """``y^p`` by squarings and a balanced product tree, as the core computes it."""
    factors, square = [], y
    while True:
        if p & 1:
            factors.append(square)
        p >>= 1
        if not p:
            break
        square = square * square
    while len(factors) > 1:
        pairs = [factors[i] * factors[i + 1] for i in range(0, len(factors) - 1, 2)]
        factors = pairs + ([factors[-1]] if len(factors) % 2 else [])
    return factors[0]


def native_eval(steps: list[dict[str, Any]], x: torch.Tensor) -> torch.Tensor:
    """The approximation whose :meth:`Approximation.steps` are ``steps``, in torch ops (any
    device, autograd-able).

    It takes the core's steps with the core's coefficients; only the floating point rounding
    of the device differs.
    """
    y = x
    for step in steps:
        op = step["op"]
        if op == "polynomial":
            y = _polynomial(step, y)
        elif op == "square":
            for _ in range(step["times"]):
                y = y * y
        elif op == "power":
            y = _power(y + step["shift"], step["p"])
        elif op == "goldschmidt":
            hi = step["hi"]
            e = y * (-1.0 / hi) + 1.0
            y = y * (-1.0 / (hi * hi)) + 2.0 / hi
            for _ in range(1, step["iterations"]):
                e = e * e
                y = y * (e + 1.0)
        elif op == "newton":
            h = x * -0.5
            y = _polynomial(step["guess"], x)
            for _ in range(step["steps"]):
                y = y * 1.5 + (y * y) * (h * y)
        else:
            raise ValueError(f"unknown approximation step {op!r}")
    return y


def _exact(function: str, x: torch.Tensor) -> torch.Tensor:
    if function == "exp":
        return x.exp()
    if function == "reciprocal":
        return x.reciprocal()
    if function == "inv_sqrt":
        return x.rsqrt()
    if function == "gelu":
        return nn.functional.gelu(x)
    raise ValueError(f"{function} has no exact counterpart")


class PolyApprox(nn.Module):
    """One :class:`Approximation` as a module; its range is a saved, calibratable buffer.

    In training mode inputs are clamped to the range (see :meth:`forward`); in eval mode they
    are not, so the module computes exactly what the encrypted evaluator computes. With
    :meth:`keep_in` set (during distillation), each forward also leaves in :attr:`penalty`
    how far its inputs stray from a target interval, on a log scale.

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
        self._steps = approximation.steps()
        self.native = native
        self.exact = False
        self.register_buffer("range", torch.tensor(approximation.range, dtype=torch.float64))
        self._seen: list[float] | None = None
        self.out_of_range = 0
        self._target: tuple[float, float] | None = None
        self.penalty: torch.Tensor | None = None

    @property
    def function(self) -> str:
        """What it computes: ``exp``, ``power``, ``reciprocal``, ``inv_sqrt`` or ``gelu``."""
        return self._approximation.function

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
        if approximation.function != self.function:
            raise ValueError(
                f"cannot replace a {self.function} approximation by {approximation.function}"
            )
        self._approximation, self._steps = approximation, approximation.steps()
        with torch.no_grad():
            self.range.copy_(torch.tensor(approximation.range, dtype=torch.float64))

    def raise_top(
        self,
        factor: float,
        *,
        bottom: float = 1.0,
        max_relative_error: float = 1e-5,
        max_newton_steps: int = 8,
    ) -> None:
        """Raises a 1/sqrt's or 1/x's range top ``factor``-fold (and lowers its bottom
        ``bottom``-fold), adding iterations until its relative error is back within
        ``max_relative_error`` (or within its error before, if that was larger).

        Why: 1/sqrt starts from a Chebyshev guess, which past its range grows like its
        top-degree Chebyshev polynomial, so a variance a little outside the calibrated range
        (a sample unlike the calibration data) sends Newton to infinity; Goldschmidt's 1/x
        diverges from about twice its top. Under encryption nothing can clamp either. Headroom
        costs iterations on a narrow chain (refresh round trips, not levels of the block):
        Newton steps for 1/sqrt (at most ``max_newton_steps``), Goldschmidt iterations for
        1/x (at most 8 more than it had).
        """
        if factor < 1 or bottom < 1:
            raise ValueError(f"factor and bottom must be at least 1, got {factor} and {bottom}")
        lo, hi = self.approximation.range
        lo, hi = lo / bottom, hi * factor
        target = max(max_relative_error, self.approximation.max_error()[1])
        if self.function == "inv_sqrt":
            (step,) = (s for s in self._steps if s["op"] == "newton")
            degree = len(step["guess"]["coefficients"]) - 1
            first, last = int(step["steps"]), max_newton_steps

            def make(n: int) -> Approximation:
                return Approximation.inv_sqrt(lo, hi, guess_degree=degree, newton_steps=n)

        elif self.function == "reciprocal" and self._steps[0]["op"] == "goldschmidt":
            first = int(self._steps[0]["iterations"])
            last = first + 8

            def make(n: int) -> Approximation:
                return Approximation.goldschmidt(n, lo, hi)

        else:
            raise ValueError(f"only a 1/sqrt's or a Goldschmidt 1/x's range is widened, not {self}")
        for n in range(first, last + 1):
            try:
                wider = make(n)
            except ValueError:  # past the core's most iterations
                break
            if wider.max_error()[1] <= target:
                self.set_approximation(wider)
                return
        raise ValueError(
            f"{self.function} on [{lo:.4g}, {hi:.4g}] needs more than {last} iterations for a "
            f"relative error of {target:g}"
        )

    def keep_in(self, target: tuple[float, float] | None) -> None:
        """Sets (or clears) the interval the range penalty pulls the inputs into."""
        self._target = target
        self.penalty = None

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

    def _observe(self, x: torch.Tensor) -> None:
        if self._seen is not None:
            with torch.no_grad():
                lo, hi = self.range.tolist()
                # An input an earlier approximation blew up to inf or NaN is no range to fit:
                # the seen interval keeps the finite ones (inf counts as out of range below).
                finite = x[torch.isfinite(x)]
                if finite.numel():
                    self._seen[0] = min(self._seen[0], float(finite.min()))
                    self._seen[1] = max(self._seen[1], float(finite.max()))
                self.out_of_range += int(((x < lo) | (x > hi)).sum())
        if self._target is not None and self.training:
            lo, hi = self._target
            logs = x.clamp_min(1e-12).log()
            penalty = (
                torch.relu(logs - math.log(hi)).square() + torch.relu(math.log(lo) - logs).square()
            ).mean()
            # Shared modules (a block's two LayerNorms) add up until the caller resets it.
            self.penalty = penalty if self.penalty is None else self.penalty + penalty

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._observe(x)
        if self.exact:
            return _exact(self.function, x)
        approximation = self.approximation
        if self.training:
            # A polynomial explodes outside its range (Goldschmidt's iterations overflow), and
            # one wild step of training would end the run with an inf. Clamping is the identity
            # on the range, so the trained function is the evaluated one wherever calibration
            # holds; in eval mode inputs pass unclamped, exactly as under encryption.
            lo, hi = approximation.range
            x = x.clamp(lo, hi)
        if x.device.type == "cpu" and not self.native and x.dtype in (torch.float32, torch.float64):
            return _CoreFunction.apply(x, approximation)
        return native_eval(self._steps, x)

    def extra_repr(self) -> str:
        lo, hi = self.range.tolist()
        mode = "exact" if self.exact else ("native" if self.native else "core")
        return f"{self._approximation.name}, range=({lo:.4g}, {hi:.4g}), {mode}"


class PowerApprox(PolyApprox):
    """The softmax numerator ``(x + shift)^p`` with a learned ``shift`` (2Quad for p = 2).

    It is its own exact function, so it is computed in torch ops (the core's squaring steps)
    on every device; :attr:`approximation` hands the current shift to the encrypted side. In
    exact mode (calibration against the teacher) it is the teacher's ``exp``.
    """

    def __init__(self, approximation: Approximation) -> None:
        if approximation.function != "power":
            raise ValueError(f"PowerApprox needs a power, got {approximation.name}")
        super().__init__(approximation, native=True)
        self.p = int(approximation.kind.split(":")[1])
        self.shift = nn.Parameter(torch.tensor(float(approximation.shift), dtype=torch.float64))

    def _sync_shift(self) -> None:
        """Carries the learned shift into the core's approximation."""
        shift = float(self.shift.detach())
        if self._approximation.shift != shift:
            self._approximation = self._approximation.with_shift(shift)
            self._steps = self._approximation.steps()

    @property
    def approximation(self) -> Approximation:
        self._sync_shift()
        return super().approximation

    def set_range(self, lo: float, hi: float) -> None:
        self._sync_shift()
        super().set_range(lo, hi)

    def set_approximation(self, approximation: Approximation) -> None:
        """Replaces the approximation, its range and the learned shift."""
        super().set_approximation(approximation)
        with torch.no_grad():
            self.shift.fill_(float(approximation.shift))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._observe(x)
        if self.exact:
            return x.exp()
        if self.training:
            # As for every approximation: trained on its range, evaluated unclamped.
            lo, hi = self.range.tolist()
            x = x.clamp(lo, hi)
        return self.power_of(x)

    def power_of(self, x: torch.Tensor, shift: float | None = None) -> torch.Tensor:
        """``(x + shift)^p`` as the core computes it, at the learned shift unless one is
        given; unclamped and unobserved (what calibration and fitting the shift use)."""
        return _power(x + (self.shift.to(x.dtype) if shift is None else shift), self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, shift={float(self.shift):.4g}, " + super().extra_repr()


def poly_module(a: Approximation | PolyApprox) -> PolyApprox:
    """``a`` as a module: the right :class:`PolyApprox` for its kind."""
    if isinstance(a, PolyApprox):
        return a
    return PowerApprox(a) if a.function == "power" else PolyApprox(a)


class PolySoftmax(nn.Module):
    """The softmax over the last axis as ``numerator(x) / denominator``, without the max shift.

    The denominator is the row sum through ``reciprocal`` (an approximation of 1/x), or, with
    ``heads`` instead, a positive constant per head learned in distillation (no reciprocal at
    all; it folds into the output projection). There is no max subtraction because the
    encrypted evaluator cannot compute a max; the numerator's calibrated range covers the raw
    scores instead. In exact mode it is the teacher's softmax.
    """

    def __init__(
        self,
        numerator: Approximation | PolyApprox,
        reciprocal: Approximation | PolyApprox | None = None,
        *,
        heads: int | None = None,
    ) -> None:
        super().__init__()
        if (reciprocal is None) == (heads is None):
            raise ValueError("give either a reciprocal (row-sum denominator) or heads (constant)")
        self.numerator = poly_module(numerator)
        self.reciprocal = None if reciprocal is None else poly_module(reciprocal)
        self.log_denominator = (
            None if heads is None else nn.Parameter(torch.zeros(heads, dtype=torch.float64))
        )
        self.exact = False
        self._row_sums: list[torch.Tensor] | None = None
        self._score_rows: list[torch.Tensor] | None = None

    @property
    def constants(self) -> torch.Tensor | None:
        """The constant denominator per head (None for the row sum)."""
        ld = self.log_denominator
        return None if ld is None else ld.detach().exp()

    def start_observing_sums(self) -> None:
        """Records the mean row sum per head from now on (to calibrate a constant)."""
        self._row_sums = []

    def stop_observing_sums(self) -> torch.Tensor | None:
        """The mean row sum of the numerators per head seen since :meth:`start_observing_sums`."""
        sums, self._row_sums = self._row_sums, None
        if not sums:
            return None
        return torch.stack(sums).mean(dim=0)

    @torch.no_grad()
    def fit_shift(self, rows: torch.Tensor, candidates: int = 41) -> float:
        """Sets a power numerator's shift to the one whose row-normalised maps are nearest
        (MSE) the exact softmax's on these score rows; returns it."""
        rows = rows.to(torch.float64)
        lo, hi = float(rows.min()), float(rows.max())
        want = torch.softmax(rows, dim=-1)
        best = (math.inf, -lo)
        for c in torch.linspace(-lo - 0.5 * (hi - lo), -lo + 2.0 * (hi - lo), candidates).tolist():
            e = self.numerator.power_of(rows, c)
            err = float(((e / e.sum(dim=-1, keepdim=True).clamp_min(1e-300) - want) ** 2).mean())
            best = min(best, (err, c))
        self.numerator.shift.fill_(best[1])
        return best[1]

    def start_sampling_scores(self) -> None:
        """Keeps some rows of the exact scores from now on (for :meth:`fit_shift`)."""
        self._score_rows = []

    def stop_sampling_scores(self) -> torch.Tensor | None:
        rows, self._score_rows = self._score_rows, None
        return torch.cat(rows) if rows else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._score_rows is not None:
            with torch.no_grad():
                self._score_rows.append(x.detach().reshape(-1, x.shape[-1])[::7][:64].cpu())
        if self.exact and self._row_sums is not None:
            # Teacher-forced calibration of a constant: the student's numerators' sums on the
            # teacher's scores, while the teacher's softmax carries on downstream.
            with torch.no_grad():
                exact, self.numerator.exact = self.numerator.exact, False
                self._row_sums.append(self.numerator(x).sum(dim=-1).mean(dim=(0, 2)).double())
                self.numerator.exact = exact
        if self.exact:
            # The teacher's softmax; an exp numerator's 1/x sees the teacher's sums. A power's
            # sums are of another scale: its 1/x sees the power's own sums of the teacher's
            # scores, which no approximation upstream can have blown up.
            self.numerator._observe(x)
            if self.reciprocal is not None and self.numerator.function == "exp":
                e = x.exp()
                den = e.sum(dim=-1, keepdim=True)
                self.reciprocal._observe(den)
                return e / den
            if self.reciprocal is not None and isinstance(self.numerator, PowerApprox):
                with torch.no_grad():
                    self.reciprocal._observe(self.numerator.power_of(x).sum(dim=-1, keepdim=True))
            return torch.softmax(x, dim=-1)
        e = self.numerator(x)
        if self._row_sums is not None:
            with torch.no_grad():
                self._row_sums.append(e.sum(dim=-1).mean(dim=(0, 2)).to(torch.float64))
        if self.reciprocal is not None:
            return e * self.reciprocal(e.sum(dim=-1, keepdim=True))
        scale = (-self.log_denominator).exp().to(e.dtype)
        return e * scale.view(1, -1, 1, 1)


class PolyGELU(nn.Module):
    """The GELU approximation (the paper's Quad by default) as an activation module."""

    def __init__(self, gelu: Approximation | PolyApprox) -> None:
        super().__init__()
        self.gelu = poly_module(gelu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gelu(x)
