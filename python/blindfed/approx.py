"""Polynomial approximations of the transformer's non-polynomial functions.

Each :class:`Approximation` is the single source of truth for its coefficients and range: the
encrypted evaluator, the plaintext mirror and the torch student all read them from here.

>>> import numpy as np
>>> from blindfed.approx import Approximation
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
"""

from blindfed._core import Approximation

__all__ = ["Approximation"]
