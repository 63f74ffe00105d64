"""The verdict: "PTQ is fine", "QAT needed" or "change the format", with the numbers behind it.

ε = max(TOLERANCE, NOISE_Z · SE), SE the standard error over batches of the PTQ gap (paired
per-batch differences), TOLERANCE = 0.01 nats (+1% perplexity), NOISE_Z = 2: a gap the
batches cannot tell from zero counts as fine (`eval_modes.basin_level`, the same level the
trainer's `--basin-monitor` uses).

Calibration (`CALIBRATION_SOURCE`): the share r̂(gap) of a PTQ gap that QAT recovers at
CALIBRATION_BUDGET, measured on the package's own models and read off `CALIBRATION` (the
measured points, adjacent violators pooled so a larger gap never predicts a smaller share;
linear in log gap between points, constant beyond them). The gap alone is used because on the
calibration points no basin measure (κ̂, the scan's wall slope, the random radius) ranks the
recovered share better than the gap does; they are reported, not ruled on. Rules, first match
wins, with L₀ the float loss and R = gap·(1 − r̂) the loss QAT is expected to leave:

1. **PTQ is fine** when gap ≤ ε, or when QAT is expected to win no more than ε: r̂·gap ≤ ε.
2. **change the format: keep these layers at higher precision** when keeping the units whose
   own rounding leaves the basin (κ̂_ℓ ≥ 1) at 8 bits (float, counted as 16 bits, when the
   target is 8 bits already) costs at most MIXED_EXTRA_BITS = 1 bit per weight on average
   and brings the measured gap to ≤ ε with everything else rounded.
3. **change the format: more bits or smaller groups** when R > RESIDUAL_MAX · L₀ (5%): the
   advice names the cheapest of the measured `alternatives` whose own R is within 5% (else the
   one with the smallest R).
4. **QAT needed** otherwise, with the share r̂ it is expected to recover.
"""

from __future__ import annotations

import math

from ..eval_modes import BASIN_NOISE_Z, BASIN_TOLERANCE
from ..quant.spec import AFFINE_BITS, AFFINE_GROUP_SIZES, QuantSpec

TOLERANCE = BASIN_TOLERANCE  # one definition of the basin level (loss.basin_level)
NOISE_Z = BASIN_NOISE_Z
MIXED_EXTRA_BITS = 1.0
FLOAT_BITS = 16
# The loss QAT may be expected to leave, relative to the float loss, before "change the format".
RESIDUAL_MAX = 0.05
# The share of a PTQ gap QAT recovered, by gap: `calibration_points` of the saved calibration's
# rows (tests/test_diagnose.py checks they are equal).
CALIBRATION_SOURCE = "benchmarks/results/diagnose_calibration.md"
CALIBRATION_BUDGET = "a fine-tune of 500 steps of 8 x 128 tokens, learned affine, cosine LR 1e-3"
CALIBRATION = (
    (0.024919, 0.0673),
    (0.043579, 0.3245),
    (0.10462, 0.5895),
    (0.170075, 0.5968),
    (0.415214, 0.7636),
)

PTQ_FINE = "PTQ is fine"
QAT_NEEDED = "QAT needed"
CHANGE_FORMAT = "change the format"


def _shifted(spec: QuantSpec, more_bits: int, halve_group: bool) -> QuantSpec:
    if not spec.is_affine:
        return spec
    i = min(AFFINE_BITS.index(spec.bits) + more_bits, len(AFFINE_BITS) - 1)
    g = max(spec.group_size // 2, AFFINE_GROUP_SIZES[0]) if halve_group else spec.group_size
    return QuantSpec("affine", AFFINE_BITS[i], g)


def alternatives(specs) -> list[tuple[str, object]]:
    """[(name, spec -> spec)]: the affine formats "change the format" measures, named by what
    they make of the most common target format: one and two bit widths up, half the group
    size, and both (each layer's own format moved the same way; fp formats stay)."""
    specs = list(specs)
    main = max(set(specs), key=specs.count)
    if not main.is_affine or main.bits >= AFFINE_BITS[-1]:
        return []
    moves = [(1, False), (2, False), (0, True), (1, True)]
    out, seen = [], set()
    for more, halve in moves:
        new = _shifted(main, more, halve)
        if new != main and new not in seen:
            seen.add(new)
            out.append((str(new), lambda s, m=more, h=halve: _shifted(s, m, h)))
    return out


def higher_precision(spec: QuantSpec) -> QuantSpec | None:
    """Rule 2's format for a layer: affine 8 bits, or None (float) for an 8-bit target."""
    if spec.bits >= 8:
        return None
    return QuantSpec("affine", 8, spec.group_size if spec.is_affine else 32)


def _result(label: str, advice: str, reasons: list[str]) -> dict:
    return {"label": label, "advice": advice, "reasons": reasons}


def calibration_points(rows, share: str = "recovered_net") -> tuple[tuple[float, float], ...]:
    """((gap, share), ...): calibration rows' PTQ gap (nats) and the share of it QAT recovered
    (`row[share]`), over the rows whose gap exceeds their ε, sorted by gap, adjacent violators
    pooled (a block's gap is the geometric mean of its members'): a larger gap never predicts a
    smaller share."""
    pts = sorted(
        (r["gap"], r[share]) for r in rows if r.get(share) is not None and r["gap"] > r["eps"]
    )
    blocks: list[list[float]] = []  # [sum of log gap, sum of share, count]
    for g, y in pts:
        blocks.append([math.log(g), y, 1])
        while len(blocks) > 1 and blocks[-2][1] / blocks[-2][2] > blocks[-1][1] / blocks[-1][2]:
            last = blocks.pop()
            blocks[-1] = [a + b for a, b in zip(blocks[-1], last)]
    return tuple((round(math.exp(lg / n), 6), round(y / n, 4)) for lg, y, n in blocks)


def expected_recovery(gap: float, points=None) -> float:
    """The share of a PTQ gap of `gap` nats QAT is expected to recover at CALIBRATION_BUDGET:
    `points` (default CALIBRATION) linear in log gap between them, constant beyond the ends."""
    pts = points or CALIBRATION
    if gap <= pts[0][0]:
        return pts[0][1]
    for (g0, y0), (g1, y1) in zip(pts, pts[1:]):
        if gap <= g1:
            t = math.log(gap / g0) / math.log(g1 / g0)
            return y0 + t * (y1 - y0)
    return pts[-1][1]


def expected_left(gap: float) -> float:
    """The loss (nats) QAT is expected to leave of a PTQ gap of `gap`: gap · (1 − r̂(gap))."""
    return gap * (1 - expected_recovery(gap))


def _suggest(formats, l0: float) -> dict | None:
    """The cheapest measured format whose expected loss after QAT is within RESIDUAL_MAX of the
    float loss, else the one QAT is expected to bring closest."""
    if not formats:
        return None
    rows = [{**f, "after": expected_left(f["gap"])} for f in formats]
    ok = [f for f in rows if f["after"] <= RESIDUAL_MAX * l0]
    if ok:
        return min(ok, key=lambda f: (f["bits_per_weight"], f["after"]))
    return min(rows, key=lambda f: f["after"])


def verdict(d: dict) -> dict:
    """{"label", "advice", "reasons": [...]} from `diagnose_model`'s measurements `d`."""
    gap, eps, scan, l0 = d["gap"], d["eps"], d["scan"], d["float"]["loss"]
    head = f"PTQ gap {gap:+.4f} nats vs ε {eps:.4f}; κ̂ {scan['kappa_hat']:.2f}"
    if gap <= eps:
        advice = "round-to-nearest at this format stays inside the float model's basin"
        return _result(PTQ_FINE, advice, [head + " (the RTN point is inside the basin)"])
    share, after = expected_recovery(gap), expected_left(gap)
    reasons = [
        head,
        f"QAT is expected to recover {100 * share:.0f}% of it ({CALIBRATION_BUDGET}; "
        f"{CALIBRATION_SOURCE}), leaving {after:+.4f} nats ({100 * after / l0:+.1f}%)",
    ]
    lo, hi = CALIBRATION[0][0], CALIBRATION[-1][0]
    if not lo <= gap <= hi:  # the share is held at the nearest calibrated one: say so
        reasons.append(f"the gap lies outside the calibrated gaps ({lo:.4f} to {hi:.4f} nats)")
    if share * gap <= eps:
        advice = (
            "QAT is not expected to recover more than ε of this gap; use round-to-nearest, "
            "or a finer format if the gap matters"
        )
        return _result(PTQ_FINE, advice, reasons)
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
    if rnd:  # measured and reported; no longer a rule (the calibration: see the header)
        radius = rnd["radius"]
        size = "beyond the scan (no rise)" if radius is None else f"{radius:.2f} ×"
        reasons.append(f"random directions: basin radius {size} the rounding error")
    if sr is not None and "best_gap" in sr:
        reasons.append(
            f"best of {len(sr['loss'])} stochastic roundings: gap {sr['best_gap']:+.4f} "
            f"({sr['gain_over_rtn']:+.4f} vs RTN)"
        )
    if after > RESIDUAL_MAX * l0:
        pick = _suggest(d.get("formats"), l0)
        advice = (
            f"more bits or smaller groups: after QAT this format is still expected to lose "
            f"{100 * after / l0:.1f}% (> {100 * RESIDUAL_MAX:.0f}%)"
        )
        if pick:
            advice += (
                f"; {pick['change']} ({pick['bits_per_weight']:.2f} bits/weight): RTN gap "
                f"{pick['gap']:+.4f}, expected {100 * pick['after'] / l0:+.1f}% after QAT"
            )
        return _result(CHANGE_FORMAT, advice, reasons)
    advice = (
        f"QAT: expected to recover {100 * share:.0f}% of the gap, to within "
        f"{100 * after / l0:.1f}% of the float loss"
    )
    return _result(QAT_NEEDED, advice, reasons)
