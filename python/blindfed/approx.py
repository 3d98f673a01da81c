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

from __future__ import annotations

import json
from typing import Any

from blindfed._core import Approximation, approximation_preset

__all__ = ["Approximation", "from_spec", "preset"]


def preset(name: str = "default") -> dict[str, Any]:
    """The block's approximations: ``"default"`` (ours) or ``"paper"`` (BlindFed's choices).

    Keys ``exp``, ``reciprocal``, ``inv_sqrt``, ``gelu`` (ranges to be calibrated) and ``eps``.

    >>> preset("paper")["exp"].name
    'exp_taylor(degree=6)'
    """
    return approximation_preset(name)


def from_spec(spec: dict[str, Any]) -> Approximation:
    """Rebuilds the approximation :meth:`Approximation.spec` describes (to load a saved model).

    The rebuilt coefficients must equal the spec's, so a tampered or stale spec is refused.

    >>> a = Approximation.exp_chebyshev(-6.0, 3.0, 11)
    >>> from_spec(a.spec()).spec() == a.spec()
    True
    """
    try:
        kind, name = spec["kind"], spec["name"]
        lo, hi = (float(v) for v in spec["range"])
        if kind == "polynomial" and name == "gelu_quad":
            a = Approximation.gelu_quad().with_range(lo, hi)
        elif kind == "polynomial" and name == "gelu_chebyshev":
            a = Approximation.gelu_chebyshev(lo, hi, len(spec["coefficients"]) - 1)
        elif kind == "exp_chebyshev":
            a = Approximation.exp_chebyshev(lo, hi, len(spec["coefficients"]) - 1)
        elif kind == "exp_squaring":
            a = Approximation.exp_squaring(int(spec["r"]), lo, hi)
        elif kind == "exp_taylor":
            a = Approximation.exp_taylor(lo, hi, int(spec["degree"]))
        elif kind == "goldschmidt":
            a = Approximation.goldschmidt(int(spec["iterations"]), lo, hi)
        elif kind == "inv_sqrt":
            degree = len(spec["guess"]["coefficients"]) - 1
            a = Approximation.inv_sqrt(lo, hi, degree, int(spec["newton_steps"]))
        else:
            raise ValueError(f"unknown approximation kind {kind!r} ({name!r})")
    except (KeyError, TypeError) as e:
        raise ValueError(f"malformed approximation spec: {e!r}") from e
    if _normal(a.spec()) != _normal(spec):
        raise ValueError(f"spec of {name!r} does not match its rebuilt coefficients")
    return a


def _normal(spec: dict[str, Any]) -> Any:
    # Tuples and lists compare equal after a JSON round trip (saved specs come back as lists).
    return json.loads(json.dumps(spec))
