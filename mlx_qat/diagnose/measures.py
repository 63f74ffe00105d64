"""The numbers the diagnostics read off a scan: basin edge α*, κ̂, wall slope, noise.

A scan is a list of step sizes `alphas` (starting at 0) and the loss `rise` above the float
loss at each, `rise(α) = L(w + α·d) − L(w)` for a direction d. With a level ε > 0:

    α*  = the first up-crossing of ε by the piecewise-linear interpolation of rise(α):
          for the first k with rise_k > ε,  α* = α_{k−1} + (ε − rise_{k−1}) / (rise_k −
          rise_{k−1}) · (α_k − α_{k−1}).
          No crossing inside the scan: extrapolate from the last point α_m as if the rise were
          quadratic there (a smooth basin), α* = α_m · √(ε / rise_m) (≥ α_m), flagged
          `extrapolated`; α* = ∞ when rise_m ≤ 0.
    κ̂   = 1 / α*  (0 when α* = ∞). For the quantization direction d = Q(w) − w, κ̂ > 1 means
          the round-to-nearest point (α = 1) lies beyond the basin edge.
    wall slope = the steepest rise per unit α over the scan's segments beyond α*.

Reconstructions (`mlx_qat.diagnose`'s header says from what), on plain floats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..eval_modes import paired_se  # noqa: F401  (the basin level's noise, shared with train)


def basin_edge(alphas: Sequence[float], rise: Sequence[float], eps: float) -> tuple[float, bool]:
    """(α*, extrapolated): where `rise` (at increasing `alphas`, the first 0) first exceeds
    `eps` > 0 (rules in the module header).

    Example:
        >>> basin_edge([0, 0.5, 1.0], [0.0, 0.01, 0.09], 0.05)
        (0.75, False)
    """
    if len(alphas) != len(rise) or len(alphas) < 2:
        raise ValueError(f"basin_edge: need >= 2 matching points, got {len(alphas)}/{len(rise)}")
    if not eps > 0:
        raise ValueError(f"basin_edge: the level eps must be > 0, got {eps}")
    for k in range(1, len(alphas)):
        if rise[k] > eps:
            a0, a1, r0, r1 = alphas[k - 1], alphas[k], rise[k - 1], rise[k]
            if r0 >= eps:  # the first point is above the level already (cannot happen at α=0)
                return float(a0), False
            return float(a0 + (eps - r0) / (r1 - r0) * (a1 - a0)), False
    a_m, r_m = alphas[-1], rise[-1]
    if r_m <= 0:
        return math.inf, True
    return float(a_m * math.sqrt(eps / r_m)), True


def kappa(alpha_star: float) -> float:
    """κ̂ = 1/α* (0 for α* = ∞)."""
    return 0.0 if math.isinf(alpha_star) else 1.0 / alpha_star


def wall_slope(alphas: Sequence[float], rise: Sequence[float], alpha_star: float) -> float | None:
    """The steepest segment slope (nats per unit α) of the scan beyond α*; None without one."""
    slopes = [
        (rise[k] - rise[k - 1]) / (alphas[k] - alphas[k - 1])
        for k in range(1, len(alphas))
        if alphas[k] > alpha_star
    ]
    return max(slopes) if slopes else None


def finite(x: float) -> float | None:
    """`x` for JSON: None for ∞ and NaN (JSON has neither)."""
    return None if x is None or not math.isfinite(x) else float(x)
