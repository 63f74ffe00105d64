"""The fit's report as text (what `mlx_qat.fit` prints and saves as `report.txt`): the rows
read, the constants with their bootstrap intervals, fit quality with the leave-largest-size-out
check against its baselines (and a plain verdict each), the optimal QAT fraction (`a`, MAEs),
the empirical optima, with float twins the optima of the loss and of the QAT penalty side by
side, and fused against classic at equal budget.
"""

from __future__ import annotations

import math

from .fitting import degenerate_text
from .law import A_PAPER
from .objective import NAMES
from .result import FitResult
from .results import Merged

LAW_TEXT = (
    "L = E + A/N^alpha + B_c/D*^beta + theta·2^(-kappa·B)\n"
    "      + phi·2^(-chi·B)/(N^psi·S_qat^omega) + lam·2^(-mu·B)·S_fp^xi/(N^nu·S_qat^rho)"
)


def si(x: float) -> str:
    """1234567 → '1.23M'."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _num(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def _sources(merged: Merged, counts: dict, pipeline: str) -> list[str]:
    files = ", ".join(f"{f} ({n})" for f, n in merged.files.items())
    lines = [f"rows: {len(merged.rows)} from {len(merged.files)} file(s): {files}"]
    extra = []
    if merged.duplicates:
        extra.append(f"{merged.duplicates} identical duplicate(s) kept once")
    if merged.fp_repeats:
        extra.append(
            f"{merged.fp_repeats} FP row(s) of an FP run already read (at another bit width) counted once"
        )
    if counts.get("data_sets", 1) > 1:
        extra.append(f"rows of {counts['data_sets']} data sets fitted together (--mix-data)")
    if merged.torn:
        extra.append(f"{merged.torn} torn last line(s) skipped")
    if counts.get("no_loss"):
        extra.append(f"{counts['no_loss']} without a final loss skipped")
    for name, n in sorted(counts.get("other_pipeline", {}).items()):
        extra.append(f"{n} {name} QAT row(s) not in the law fit")
    if extra:
        lines.append("  " + "; ".join(extra))
    lines.append(
        f"  law fit on the {pipeline} pipeline: {counts.get('fp', 0)} FP + "
        f"{counts.get('qat', 0)} QAT rows"
    )
    return lines


def _params(res: FitResult) -> list[str]:
    ci = (res.bootstrap or {}).get("params") or {}
    dstar = "D* = D" if res.params.fp_tokens == "total" else "D* = D_fp"
    lines = [f"law ({dstar}, S = D/(N·B/8)):", "  " + LAW_TEXT.replace("\n", "\n  ")]
    cells = []
    for name in NAMES:
        v = getattr(res.params, name)
        lo_hi = ci.get(name)
        cells.append(
            f"{name:>6} {v:>10.4g}" + (f" [{lo_hi[0]:.3g}, {lo_hi[1]:.3g}]" if lo_hi else "")
        )
    width = max(len(c) for c in cells) + 2
    per_line = 3 if ci else 4
    for i in range(0, len(cells), per_line):
        lines.append("  " + "".join(c.ljust(width) for c in cells[i : i + per_line]).rstrip())
    if res.bootstrap:
        b = res.bootstrap
        lines.append(
            f"  [..]: {100 * b['level']:g}% bootstrap intervals, {b['n']} resamples"
            + (f" ({b['n_failed']} failed)" if b.get("n_failed") else "")
            + " of the runs, each refitted from the fixed start grid"
        )
    return lines


def _quality(res: FitResult) -> list[str]:
    n = res.n_rows or {}
    lines = [f"WARNING: {degenerate_text(res.degenerate)}"] if res.degenerate else []
    lines += [
        "fit quality",
        f"  R² of log L     {_num(res.r2_log)} on {n.get('fit', '?')} rows "
        f"(QAT rows only: {_num(res.r2_log_qat)})",
        f"  RMSE of log L   {_num(res.rmse_log)} (QAT rows only: {_num(res.rmse_log_qat)})",
    ]
    h = res.holdout
    if h:
        lines.append(
            f"  leave-largest-size-out: refit without N = {si(h['N'])}, predict its "
            f"{h['n_rows']} QAT runs: mean |error| {100 * h['mean_abs_rel_err']:.2f}%, "
            f"max {100 * h['max_abs_rel_err']:.2f}%, RMSE of log L {h['rmse_log']:.4f}"
        )
        lines += _baselines(h)
    else:
        lines.append("  leave-largest-size-out: not run (needs >= 2 sizes and enough rows)")
    return lines


def _baselines(h: dict) -> list[str]:
    lines = []
    c = h.get("copy")
    if c:
        sizes = ", ".join(si(n) for n in c["from_N"])
        lines.append(
            f"    baseline, the nearest size's loss copied (from N = {sizes}, same D, bits, f): "
            f"mean |error| {100 * c['mean_abs_rel_err']:.2f}%, max "
            f"{100 * c['max_abs_rel_err']:.2f}% on {c['n_rows']} runs (the law on these: "
            f"{100 * c['law']['mean_abs_rel_err']:.2f}%, max {100 * c['law']['max_abs_rel_err']:.2f}%)"
        )
    lines += _split(h.get("split"))
    fr = h.get("fraction")
    if fr:
        m = fr["mae"]
        lines.append(
            f"    optimal fraction of its {fr['n_optima']} (D, bits) groups, MAE in f "
            "(vertex, argmin):"
        )
        for who, label in (
            ("law", "the refitted law's argmin"),
            ("f_hat", f"f-hat, a = {fr['a']['vertex']:.3f} from the other sizes' vertices"),
            ("const", f"baseline, a constant f = {fr['const_f']:g}"),
        ):
            lines.append(f"      {label:<52} {m[who]['vertex']:>6.3f}  {m[who]['argmin']:>6.3f}")
    pairs = h.get("bit_choice") or []
    for p in pairs:
        a, b = p["held"], p["fitted"]
        lines.append(
            f"    bits at equal memory, D = {si(p['D'])}: {si(a['N'])} x {a['bits']:g}-bit "
            f"({si(a['memory_bytes'])}B) best {a['best']:.4f} (law {a['law_best']:.4f}) vs "
            f"{si(b['N'])} x {b['bits']:g}-bit ({si(b['memory_bytes'])}B) best {b['best']:.4f} "
            f"(law {b['law_best']:.4f}): the law {'picks' if p['law_right'] else 'MISSES'} the winner"
        )
    for v in h.get("verdict") or []:
        lines.append(f"  verdict: {v}")
    if pairs:
        right = sum(p["law_right"] for p in pairs)
        lines.append(
            f"  verdict: memory-matched bit choice (one side out of sample): the law picks the "
            f"measured winner in {right} of {len(pairs)} pairs"
        )
    return lines


def _split(sp: dict | None) -> list[str]:
    if not sp:
        return []
    pen = sp["penalty"]
    lines = [
        "    where the law's error lies (the held-out size's FP anchors, also left out of the fit):",
        f"      its FP term on {sp['fp']['n_rows']} anchor(s): mean |error| "
        f"{100 * sp['fp']['mean_abs_rel_err']:.2f}%",
        f"      its penalty added to the measured anchor: mean |error| "
        f"{100 * pen['law']['mean_abs_rel_err']:.2f}%, max {100 * pen['law']['max_abs_rel_err']:.2f}% "
        f"on {pen['law']['n_rows']} runs",
    ]
    if pen["copy"]:
        c = pen["copy"]
        lines.append(
            f"      baseline, the nearest size's measured penalty added to the same anchor: "
            f"{100 * c['mean_abs_rel_err']:.2f}%, max {100 * c['max_abs_rel_err']:.2f}% on "
            f"{c['n_rows']} runs"
        )
    return lines


def _fraction(res: FitResult) -> list[str]:
    if not res.a:
        return ["optimal QAT fraction: no (N, D, bits) group with >= 3 fractions"]
    ci = ((res.bootstrap or {}).get("a")) or {}
    lines = [f"optimal QAT fraction  f-hat = exp(-a / ln S)   (paper: a = {A_PAPER})"]
    for kind, what in (("vertex", "parabola vertex in ln f"), ("argmin", "grid argmin")):
        iv = ci.get(kind)
        lines.append(
            f"  a from the {what:<24} {res.a[kind]:.3f}"
            + (f"  [{iv[0]:.3f}, {iv[1]:.3f}]" if iv else "")
        )
    if ci:
        lines.append(
            "  [..]: the runs resampled, each resample's optima and a re-derived (a run left out "
            "moves its group's optimum by a grid cell)"
        )
    lines.append("  MAE against the empirical optima       vertex   argmin")
    for label, d in (
        ("f-hat, fitted a", res.mae_f_hat),
        (f"f-hat, paper a = {A_PAPER:.2f}", res.mae_f_hat_paper),
        ("the law's own argmin", res.mae_law),
        ("baseline, a constant f = 0.1", res.mae_const_f),
    ):
        if d is None:  # a fit saved before the baseline was reported
            continue
        lines.append(f"    {label:<34} {d['vertex']:>7.3f}  {d['argmin']:>7.3f}")
    const = res.mae_const_f
    if const:
        for label, d in (
            ("f-hat with the fitted a", res.mae_f_hat),
            ("the law's argmin", res.mae_law),
        ):
            if not all(d[k] < const[k] for k in d):
                lines.append(
                    f"  verdict: {label} does NOT beat a constant f = 0.1 on these optima "
                    "(in sample)"
                )
    return lines


def _optima(res: FitResult) -> list[str]:
    if not res.optima:
        return []
    lines = [
        "empirical optima per (N, D, bits)   (f-hat with the vertex-fitted a; * = at the "
        "grid's edge)",
        f"  {'N':>8} {'D':>8} {'bits':>4} {'S':>8} {'f* argmin':>9} {'f* vertex':>9} "
        f"{'f law':>7} {'f-hat':>7} {'runs':>5}",
    ]
    for o in res.optima:
        edge = "*" if o["at_edge"] else " "
        lines.append(
            f"  {si(o['N']):>8} {si(o['D']):>8} {o['bits']:>4} {o['S']:>8.2f} "
            f"{o['f_argmin']:>9.3f} {o['f_vertex']:>8.3f}{edge} {o['f_law']:>7.3f} "
            f"{o['f_hat']:>7.3f} {o['n_fractions']:>5}"
        )
    return lines


def _twins(twins: list[dict]) -> list[str]:
    if not twins:
        return []
    lines = [
        "f* of the loss and of the QAT penalty (L_QAT - L_FP of its float twin, same schedule)",
        "  per (pipeline, N, D, bits): parabola vertex in ln f (argmin); * = at the grid's edge;",
        "  spread = max - min over f of the final loss / of the twin's FP loss",
        f"  {'pipeline':>8} {'N':>7} {'D':>7} {'bits':>4} {'S':>7} {'f* loss':>14} "
        f"{'f* penalty':>14} {'penalty':>8} {'spread':>7} {'twin':>7}",
    ]
    for t in twins:
        cells = []
        for k in ("loss", "penalty"):
            edge = "*" if t[f"f_{k}_at_edge"] else " "
            cells.append(f"{t[f'f_{k}_vertex']:.3f}{edge}({t[f'f_{k}_argmin']:.3f})")
        lines.append(
            f"  {t['pipeline']:>8} {si(t['N']):>7} {si(t['D']):>7} {t['bits']:>4} "
            f"{t['S']:>7.2f} {cells[0]:>14} {cells[1]:>14} {t['penalty_at_f']:>8.4f} "
            f"{t['loss_spread']:>7.4f} {t['fp_twin_spread']:>7.4f}"
        )
    same = sum(t["f_loss_argmin"] == t["f_penalty_argmin"] for t in twins)
    lines.append(f"  the two grid argmins agree in {same} of {len(twins)} groups")
    return lines


def _pairs(pairs: list[dict]) -> list[str]:
    if not pairs:
        return []
    lines = [
        "fused vs classic at equal budget (final loss; Δ = classic − fused, > 0: fused wins)",
        f"  {'N':>8} {'D':>8} {'bits':>4} {'f':>6} {'seed':>4} {'fused':>9} {'classic':>9} "
        f"{'Δ':>9}",
    ]
    for p in pairs:
        fused = "-" if p["fused"] is None else f"{p['fused']:.4f}"
        delta = "-" if p["fused"] is None else f"{p['classic'] - p['fused']:+.4f}"
        lines.append(
            f"  {si(p['N']):>8} {si(p['D']):>8} {p['bits']:>4} {p['f']:>6.3f} "
            f"{str(p['seed']):>4} {fused:>9} {p['classic']:>9.4f} {delta:>9}"
        )
    both = [p for p in pairs if p["fused"] is not None]
    if both:
        wins = sum(p["classic"] > p["fused"] for p in both)
        mean = sum(p["classic"] - p["fused"] for p in both) / len(both)
        lines.append(f"  fused lower in {wins} of {len(both)} pairs; mean Δ {mean:+.4f}")
    return lines


def format_report(
    res: FitResult,
    merged: Merged | None = None,
    counts: dict | None = None,
    pairs: list[dict] | None = None,
    pipeline: str = "fused",
    twins: list[dict] | None = None,
) -> str:
    """The report of a fit, as text (module docstring); `twins`: `optima.twin_optima`."""
    parts = [_sources(merged, counts or {}, pipeline)] if merged is not None else []
    parts += [_params(res), _quality(res), _fraction(res), _optima(res), _twins(twins or [])]
    parts.append(_pairs(pairs or []))
    return "\n\n".join("\n".join(p) for p in parts if p)
