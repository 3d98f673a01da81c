"""Polynomial approximations of the transformer's non-polynomial functions, and their families.

Each :class:`Approximation` is the single source of truth for its coefficients and range: the
encrypted evaluator, the plaintext mirror and the torch student all read them from the Rust
core. Its text (:attr:`Approximation.text`) is its serialisation; the short texts of the CLI
(``chebyshev:15``, ``quad``, ``goldschmidt:9``, ``newton:31:2``) parse in the core too.

A :class:`StudentSpec` names one family per slot of the block: the softmax numerator (an exp
approximation, or a power such as MPCFormer's 2Quad ``(x + c)^2``), what the softmax divides
by (the row sum through 1/x, or a constant learned per head), the normalisation (LayerNorm
with 1/sqrt, or a per-feature affine map folded into the next weights), GELU's stand-in, and
whether the owner normalises the first block of each request. See ``docs/approximations.md``.

>>> import numpy as np
>>> from blindfed.approx import Approximation, StudentSpec
>>> gelu = Approximation.gelu_quad()          # the paper's Quad(x) = 0.125 x^2 + 0.25 x + 0.5
>>> float(gelu(np.array([2.0]))[0])
1.5
>>> exp = Approximation.exp_squaring(6, -4.0, 2.0)
>>> exp.depth, exp.range
(7, (-4.0, 2.0))
>>> bool(abs(exp(np.array([1.0]))[0] - np.e) < 0.03)
True
>>> exp.out_of_range(np.array([-5.0, 0.0, 3.0]))
2
>>> Approximation.parse("numerator", "quad").kind
'power:2'
>>> StudentSpec("softmax=quad denominator=constant").denominator
'constant'
"""

from __future__ import annotations

from blindfed._core import Approximation, StudentSpec

__all__ = ["Approximation", "StudentSpec", "student_spec"]


def student_spec(spec: str | StudentSpec | None = None) -> StudentSpec:
    """``spec`` as a :class:`StudentSpec`: a spec, its text over the default, or the default.

    >>> student_spec("paper").numerator.kind
    'exp:taylor:6'
    """
    if spec is None:
        return StudentSpec()
    if isinstance(spec, StudentSpec):
        return spec
    if isinstance(spec, str):
        return StudentSpec(spec)
    raise TypeError(f"expected a StudentSpec or its text, got {type(spec).__name__}")
