"""The diagnosis as a table (what `mlx_qat.diagnose` prints) and as a plot of the line scans.

The plot needs matplotlib (`pip install 'mlx_qat[plot]'`); the import error says so.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..train.plot import pyplot

TOP_LAYERS = 8  # layers drawn in the plot and listed first in the table


def _f(x, spec: str = ".4f") -> str:
    return "   n/a" if x is None else format(x, spec)


def _edge(scan: dict) -> str:
    a = scan["alpha_star"]
    if a is None:
        return "none (the loss never rises)"
    note = " (extrapolated beyond the scan)" if scan["extrapolated"] else ""
    return f"{a:.3f}{note}"


def format_report(d: dict, layers: int = TOP_LAYERS) -> str:
    """The table `mlx_qat.diagnose` prints for `diagnose`'s result `d`."""
    src, fmt, scan = d["source"], d["format"], d["scan"]
    rule = d["eps_rule"]
    step = f" (step {src['step']}, phase {src['phase']})" if src.get("step") is not None else ""
    lines = [
        f"{src['path']}{step}",
        f"  target: weights {fmt['weights']}, embeddings/head {fmt['embeddings']}; "
        f"{len(d['covered'])} layers quantized, {len(d['skipped'])} left in float",
        f"  {src['batches']} batches, {src['tokens']} tokens of {src['data']}",
        f"  float loss {d['float']['loss']:.4f}   PTQ loss {d['ptq']['loss']:.4f}   "
        f"gap {d['gap']:+.4f} ({100 * (d['gap_rel'] or 0):+.2f}%)",
        f"  level ε {d['eps']:.4f} = max(tolerance {rule['tolerance']:g}, "
        f"{rule['noise_z']:g} × SE {rule['noise_se']:.4f} of the gap over batches)",
        "",
        "  line scan L(w + α(Q(w) − w)) − L(w):",
        "    α    " + " ".join(f"{a:7.3f}" for a in scan["alphas"]),
        "    rise " + " ".join(f"{r:+7.4f}" for r in scan["rise"]),
        f"  basin edge α* {_edge(scan)}   κ̂ {scan['kappa_hat']:.2f}   "
        f"wall slope {_f(scan['wall_slope'], '.3f')} nats/α",
    ]
    rnd = d.get("random")
    if rnd:
        lines += [
            f"  random directions ({len(rnd['loss'])} draws, per-group norm of the rounding "
            "error):",
            "    scale" + " ".join(f"{s:8.2f}" for s in rnd["scales"]),
            "    rise " + " ".join(f"{m - d['float']['loss']:+8.4f}" for m in rnd["mean"]),
            f"  random radius {_f(rnd['radius'], '.2f')} × the rounding error"
            + (" (extrapolated)" if rnd["extrapolated"] and rnd["radius"] else ""),
        ]
    sr = d.get("stochastic")
    if sr and "best" in sr:
        lines.append(
            f"  stochastic rounding ({len(sr['loss'])} draws): best gap {sr['best_gap']:+.4f}, "
            f"mean {sr['mean'] - d['float']['loss']:+.4f}; vs RTN {sr['gain_over_rtn']:+.4f} "
            "(> 0: a better grid point nearby)"
        )
    elif sr:
        lines.append(f"  stochastic rounding: {sr['skipped']}")
    if d["layers"]:
        shown = d["layers"][:layers]
        lines += ["", f"  per layer (rounded alone; {len(shown)} of {len(d['layers'])} by κ̂):"]
        lines.append(f"    {'κ̂':>6} {'α*':>7} {'gap':>8}  unit")
        for u in shown:
            a = "   inf" if u["alpha_star"] is None else f"{u['alpha_star']:7.3f}"
            lines.append(f"    {u['kappa_hat']:6.2f} {a:>7} {u['gap']:+8.4f}  {u['unit']}")
    m = d.get("mixed")
    if m:
        cost = f"+{m['extra_bits']:.2f} bits per weight"
        result = f"gap {m['gap']:+.4f}" if "gap" in m else "not evaluated (dearer than 1 bit)"
        lines.append(f"  with {', '.join(m['units'])} at higher precision ({cost}): {result}")
    if d.get("formats"):
        lines += ["", "  round-to-nearest at other formats (every layer moved alike):"]
        lines += [
            f"    {f['change']:<11} {f['bits_per_weight']:5.2f} bits/weight   gap {f['gap']:+.4f}"
            for f in d["formats"]
        ]
    v = d["verdict"]
    lines += ["", f"  verdict: {v['label']}: {v['advice']}"]
    lines += [f"    - {r}" for r in v["reasons"]]
    return "\n".join(lines)


def plot_diagnosis(d: dict, out: str | os.PathLike, layers: int = TOP_LAYERS) -> Path:
    """Draw the line scans of `d` to `out` (a .png); returns the path.

    Left: the loss rise along the quantization direction, the level ε and the basin edge α*.
    Middle: the same against random directions of the same per-group norm (log scale of α).
    Right: each of the top `layers` units rounded alone.
    """
    plt = pyplot()
    scan, eps, l0 = d["scan"], d["eps"], d["float"]["loss"]
    fig, (ax, ax_r, ax_l) = plt.subplots(1, 3, figsize=(16, 4.5))
    ax.plot(scan["alphas"], scan["rise"], "o-", label="along Q(w) − w")
    ax.axhline(eps, color="gray", lw=0.8, ls=":", label=f"ε = {eps:.4f}")
    a_star = scan["alpha_star"]
    if a_star is not None and a_star <= scan["alphas"][-1]:
        ax.axvline(a_star, color="C3", lw=0.8, label=f"α* = {a_star:.3f}")
    ax.axvline(1.0, color="k", lw=0.5)
    ax.set(
        xlabel="α (1 = the PTQ point)",
        ylabel="loss − float loss (nats)",
        title=f"{d['format']['weights']}: κ̂ = {scan['kappa_hat']:.2f}; {d['verdict']['label']}",
    )
    ax.legend(fontsize=8)
    rnd = d.get("random")
    pos = [(a, r) for a, r in zip(scan["alphas"], scan["rise"]) if a > 0]
    ax_r.plot(*zip(*pos), "o-", label="along Q(w) − w")
    if rnd:
        label = f"random, same per-group norm (mean of {len(rnd['loss'])})"
        ax_r.plot(rnd["scales"], [m - l0 for m in rnd["mean"]], "s--", label=label)
    ax_r.axhline(eps, color="gray", lw=0.8, ls=":")
    ax_r.set_xscale("log", base=2)
    ax_r.set_yscale("symlog", linthresh=max(eps / 10, 1e-6))
    lowest = min([r for _, r in pos] + ([m - l0 for m in rnd["mean"]] if rnd else []))
    ax_r.set_ylim(bottom=min(0.0, lowest * 1.2))
    ax_r.set(xlabel="α (units of the rounding error)", title="quantization vs random directions")
    ax_r.legend(fontsize=8)
    for u in d["layers"][:layers]:
        ax_l.plot(u["alphas"], u["rise"], ".-", lw=1, label=f"{u['unit']} ({u['kappa_hat']:.2f})")
    ax_l.axhline(eps, color="gray", lw=0.8, ls=":")
    ax_l.set(xlabel="α (one unit moved)", title="per layer (κ̂)")
    if d["layers"]:
        ax_l.legend(fontsize=7)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
