"""The rules a student's calibration follows where its inputs are wild.

Calibration fits every approximation's range to the inputs it sees, and the student
legitimately differs from the exact model (Quad is not GELU), so a range wider than the exact
model's is expected. A hundred widths beyond it is not: an inaccurate approximation upstream
blew the inputs up, and chasing them would widen every range downstream. These functions draw
that line once.
"""

from __future__ import annotations

import math

import numpy as np

from blindfed.nn.approx import PolyApprox

__all__ = ["check_not_diverging", "check_representable", "far", "within_bound"]

#: How many widths of the exact model's range beyond it an input may reach before it is taken
#: for a blow-up.
DIVERGENCE_WIDTHS = 100


def _bound(exact: tuple[float, float]) -> tuple[float, float]:
    width = max(exact[1] - exact[0], 1e-6 * max(abs(exact[0]), abs(exact[1]), 1.0))
    return exact[0] - DIVERGENCE_WIDTHS * width, exact[1] + DIVERGENCE_WIDTHS * width


def far(seen: tuple[float, float] | None, exact: tuple[float, float] | None) -> bool:
    """Whether ``seen`` reaches :data:`DIVERGENCE_WIDTHS` widths of ``exact`` beyond it."""
    if seen is None or exact is None:
        return False
    lo, hi = _bound(exact)
    return seen[0] < lo or seen[1] > hi


def within_bound(
    seen: tuple[float, float] | None, exact: tuple[float, float] | None
) -> tuple[float, float] | None:
    """``seen`` cut to the widths around ``exact`` that :func:`far` allows (a range wholly
    beyond them shrinks to the nearer edge, so it stays a range)."""
    if seen is None or exact is None:
        return seen
    lo, hi = _bound(exact)
    return min(max(seen[0], lo), hi), max(min(seen[1], hi), lo)


def check_representable(name: str, fitted: tuple[float, float]) -> None:
    """Refuses a range that training in float32 cannot hold (past 3.4e38, or not finite): a
    ``ValueError`` naming the approximation, instead of an overflow mid-epoch. A family whose
    outputs grow that far cannot follow the model on this data (an exp numerator over wide
    attention scores sums to past 1e38, for one)."""
    top = float(np.finfo(np.float32).max)
    if not all(math.isfinite(v) and abs(v) <= top for v in fitted):
        raise ValueError(
            f"calibration: {name}'s range would be [{fitted[0]:.4g}, {fitted[1]:.4g}], beyond "
            f"what float32 holds ({top:.3g}); the families upstream cannot follow the model on "
            "this data (try one whose outputs stay bounded, e.g. a power softmax)"
        )


def check_not_diverging(
    name: str,
    seen: tuple[float, float] | None,
    exact: tuple[float, float] | None,
    modules: dict[str, PolyApprox],
) -> None:
    """Refuses to chase inputs that an inaccurate earlier approximation blew up: a
    ``ValueError`` naming the least accurate of ``modules`` if ``seen`` is :func:`far` from
    ``exact``."""
    if not far(seen, exact):
        return
    assert seen is not None and exact is not None  # far() is false otherwise
    # Quad stands in for GELU without approximating it: not a suspect.
    suspects = {k: m for k, m in modules.items() if m.approximation.name != "gelu_quad"} or modules
    worst = max(suspects.items(), key=lambda kv: kv[1].approximation.max_error(501)[1])
    raise ValueError(
        f"calibration diverges: {name} sees inputs in [{seen[0]:.4g}, {seen[1]:.4g}] where the "
        f"exact model gives [{exact[0]:.4g}, {exact[1]:.4g}]; the least accurate approximation "
        f"is {worst[0]} ({worst[1].approximation!r}, relative error "
        f"{worst[1].approximation.max_error(501)[1]:.3g} on its range). Use a higher degree or "
        "more Newton steps, or calibrate on non-degenerate data (an untrained model's ~constant "
        "tokens give LayerNorm variances near 0)"
    )
