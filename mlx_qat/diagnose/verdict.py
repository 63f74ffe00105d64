"""The verdict: "PTQ is fine", "QAT needed" or "change the format", with the numbers behind it.

Thresholds (reconstructions to be calibrated on the package's own models, not paper B's):
ε = max(TOLERANCE, NOISE_Z · SE), SE the standard error over batches of the PTQ gap (paired
per-batch differences), TOLERANCE = 0.01 nats (+1% perplexity), NOISE_Z = 2: a gap the
batches cannot tell from zero counts as fine (`eval_modes.basin_level`, the same level the
trainer's `--basin-monitor` uses). Rules, first match wins:

1. **PTQ is fine** when the PTQ gap L(Q(w)) − L(w) ≤ ε (to the scan's resolution, κ̂ ≤ 1).
2. **change the format: keep these layers at higher precision** when keeping the units whose
   own rounding leaves the basin (κ̂_ℓ ≥ 1) at 8 bits (float, counted as 16 bits, when the
   target is 8 bits already) costs at most MIXED_EXTRA_BITS = 1 bit per weight on average
   and brings the measured gap to ≤ ε with everything else rounded.
3. **change the format: more bits or smaller groups** when the grid is too coarse in every
   direction: random directions of a quarter of the rounding error's size already leave the
   basin (random radius < RANDOM_RADIUS_MIN = 0.25), and no stochastic rounding comes within ε
   of the basin or beats round-to-nearest by more than ε (without stochastic rounding, as for
   the fp formats, the radius decides alone). Calibration so far: a d2 model at 2 bits had
   random radius 0.45–0.65 and κ̂ ≈ 2, and 100 QAT steps recovered 46% of its PTQ gap, so
   "QAT needed" must cover radius 0.6.
4. **QAT needed** otherwise: the gap exceeds ε, but the basin is not much narrower than the
   grid in typical directions, or better grid points exist nearby (paper B's claim).
"""

from __future__ import annotations

from ..eval_modes import BASIN_NOISE_Z, BASIN_TOLERANCE
from ..quant.spec import QuantSpec

TOLERANCE = BASIN_TOLERANCE  # one definition of the basin level (loss.basin_level)
NOISE_Z = BASIN_NOISE_Z
MIXED_EXTRA_BITS = 1.0
FLOAT_BITS = 16
RANDOM_RADIUS_MIN = 0.25

PTQ_FINE = "PTQ is fine"
QAT_NEEDED = "QAT needed"
CHANGE_FORMAT = "change the format"


def higher_precision(spec: QuantSpec) -> QuantSpec | None:
    """Rule 2's format for a layer: affine 8 bits, or None (float) for an 8-bit target."""
    if spec.bits >= 8:
        return None
    return QuantSpec("affine", 8, spec.group_size if spec.is_affine else 32)


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "n/a" if x is None else format(x, spec)


def _result(label: str, advice: str, reasons: list[str]) -> dict:
    return {"label": label, "advice": advice, "reasons": reasons}


def verdict(d: dict) -> dict:
    """{"label", "advice", "reasons": [...]} from `diagnose_model`'s measurements `d`."""
    gap, eps, scan = d["gap"], d["eps"], d["scan"]
    k = scan["kappa_hat"]
    head = f"PTQ gap {gap:+.4f} nats vs ε {eps:.4f}; κ̂ {k:.2f}"
    if gap <= eps:
        advice = "round-to-nearest at this format stays inside the float model's basin"
        return _result(PTQ_FINE, advice, [head + " (the RTN point is inside the basin)"])
    reasons = [head + (f", basin edge α* {scan['alpha_star']:.3f}" if scan["alpha_star"] else "")]
    mixed = d.get("mixed")
    if mixed and mixed.get("gap") is not None and mixed["gap"] <= eps:
        kept = ", ".join(f"{p} ({s})" for p, s in mixed["layers"].items())
        reasons.append(
            f"{len(mixed['units'])} unit(s) with κ̂ >= 1 ({', '.join(mixed['units'])}); "
            f"with them at higher precision (+{mixed['extra_bits']:.2f} bits per weight) "
            f"the gap is {mixed['gap']:+.4f} <= ε"
        )
        return _result(CHANGE_FORMAT, f"keep these layers at higher precision: {kept}", reasons)
    rnd, sr = d.get("random"), d.get("stochastic")
    radius = rnd["radius"] if rnd else None
    narrow = rnd is not None and radius is not None and radius < RANDOM_RADIUS_MIN
    sr_ok = sr is not None and "best_gap" in sr
    # Without stochastic rounding (fp formats, or --sr-draws 0) the random radius decides.
    no_nearby = not sr_ok or (sr["best_gap"] > eps and sr["gain_over_rtn"] <= eps)
    if rnd:
        size = "beyond the scan (no rise)" if radius is None else f"{radius:.2f} ×"
        reasons.append(
            f"random directions: basin radius {size} the rounding error "
            f"(rise at 1×: {_fmt(rnd['rise_at_1'], '+.4f')})"
        )
    if sr_ok:
        reasons.append(
            f"best of {len(sr['loss'])} stochastic roundings: gap {sr['best_gap']:+.4f} "
            f"({sr['gain_over_rtn']:+.4f} vs RTN)"
        )
    if narrow and no_nearby:
        advice = (
            "more bits or smaller groups: the grid is wider than the basin in "
            "typical directions and no low-loss grid point was found nearby"
        )
        return _result(CHANGE_FORMAT, advice, reasons)
    hot = [u["unit"] for u in d.get("layers") or [] if u["kappa_hat"] >= 1]
    if hot:
        reasons.append(f"units whose own rounding leaves the basin (κ̂ >= 1): {', '.join(hot)}")
    why = []
    if rnd is None:  # say so rather than claim a width nobody measured
        why.append("the random-direction radius was not measured (--random-draws 0)")
    elif not narrow:
        why.append(
            "in typical directions the basin is not much narrower than the grid (random "
            f"radius >= {RANDOM_RADIUS_MIN})"
        )
    if sr_ok and not no_nearby:
        why.append("lower-loss grid points exist nearby")
    because = "; ".join(why) or "no evidence against recovery was measured"
    advice = f"QAT (gradients at the quantized weights steer back into the basin): {because}"
    return _result(QAT_NEEDED, advice, reasons)
