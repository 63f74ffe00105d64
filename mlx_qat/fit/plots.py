"""The fit's figures (matplotlib: `pip install 'mlx_qat[fit]'`), as PNG files.

- `loss_vs_fraction.png`: final loss against f per (N, D), one colour per bit width: the runs,
  the law's curve, its argmin (triangle) and the empirical parabola vertex (dotted).
- `optimal_fraction_vs_S.png`: the paper's central figure: the empirical optimal fractions
  against S, with f̂ for the paper's and the fitted a (bootstrap interval shaded) and the law's
  argmin.
- `predicted_vs_observed.png`: the law against every fitted run; the largest size ringed.
- `fused_vs_classic.png` (with classic runs): loss against f for both pipelines.
- `best_bits_vs_memory.png`: per token budget, the law's loss per bit width over parameter
  memory M (N = 8·M/B, law-optimal f), the best observed runs, and the winning width below.

Figures are drawn on `matplotlib.figure.Figure` objects (no pyplot, no global backend).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .law import A_PAPER, f_hat, predict
from .planning import MEMORY_BITS, memory_curves
from .report import si as _si
from .result import FitResult
from .results import is_fp_row, row_fraction

MAX_PANELS = 16
COLOURS = {1: "#8c564b", 2: "#1f77b4", 3: "#9467bd", 4: "#2ca02c", 6: "#ff7f0e", 8: "#d62728"}


def _mpl():
    try:
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "mlx_qat.fit plots need matplotlib: pip install 'mlx_qat[fit]' (or pass --no-plot)"
        ) from e
    return Figure


def _colour(bits) -> str:
    return COLOURS.get(int(bits), "black")


def _key(*xs) -> tuple:
    return tuple(float(f"{float(x):.9g}") for x in xs)


def _grid(n: int, width: float = 4.2, height: float = 3.3):
    Figure = _mpl()
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


def _focus(ax, values) -> None:
    """y-limits around `values` (the runs, the curves' minima): a law curve that shoots up
    where the law extrapolates (f → 1, tiny S) must not flatten the part that has data."""
    v = np.asarray([x for x in values if np.isfinite(x)], float)
    if v.size:
        lo, hi = v.min(), v.max()
        pad = 0.15 * (hi - lo) + 0.01 * abs(hi)
        ax.set_ylim(lo - pad, hi + pad)


def _qat_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if not is_fp_row(r) and float(r["D_qat"]) > 0]


def _plot_runs(ax, rows: list[dict], style: str, **kw) -> None:
    ax.plot([row_fraction(r) for r in rows], [r["final_loss"] for r in rows], style, **kw)


def plot_loss_vs_fraction(res: FitResult, rows: list[dict], path: Path) -> Path:
    """Loss against f per (N, D), bit widths in colour, with the law's curve."""
    qat = _qat_rows(rows)
    settings = sorted({_key(r["N"], r["D"]) for r in qat})[:MAX_PANELS]
    optima = {_key(o["N"], o["D"], o["bits"]): o for o in res.optima}
    fig, axes = _grid(max(len(settings), 1))
    for ax, (N, D) in zip(axes, settings):
        here = [r for r in qat if _key(r["N"], r["D"]) == (N, D)]
        fs = np.array([row_fraction(r) for r in here])
        grid = np.geomspace(max(min(fs.min() / 2, 0.02), 1e-3), 0.98, 200)
        seen = [r["final_loss"] for r in here]
        for b in sorted({int(r["bits"]) for r in here}):
            mine = [r for r in here if int(r["bits"]) == b]
            c = _colour(b)
            _plot_runs(ax, mine, "o", color=c, label=f"{b}-bit runs")
            curve = predict(res.params, N, (1 - grid) * D, grid * D, b)
            ax.plot(grid, curve, "-", color=c, lw=1.2, alpha=0.8)
            seen.append(float(np.min(curve)))
            o = optima.get(_key(N, D, b))
            if o is not None:
                fl = o["f_law"]
                ax.plot([fl], [predict(res.params, N, (1 - fl) * D, fl * D, b)], "v", color=c)
                ax.axvline(o["f_vertex"], color=c, ls=":", lw=1)
        _focus(ax, seen)
        ax.set(xscale="log", xlabel="QAT fraction f = D_qat / D", ylabel="final loss (nats/token)")
        ax.set_title(f"N = {_si(N)}, D = {_si(D)} tokens", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    if settings:
        axes[0].legend(fontsize=8, title="lines: law; ▼ law argmin; : vertex", title_fontsize=7)
    fig.suptitle("Final loss vs QAT fraction, with the fitted law")
    fig.savefig(path, dpi=110)
    return path


def plot_optimal_fraction(res: FitResult, path: Path) -> Path:
    """Empirical optimal fraction vs S, with the closed form for the paper's and fitted a."""
    fig, (ax,) = _grid(1, 7.5, 5)
    opt = res.optima
    S = np.array([o["S"] for o in opt]) if opt else np.array([2.0, 1e3])
    s_grid = np.geomspace(max(S.min() / 1.5, 1.05), S.max() * 1.5, 300)
    ax.plot(s_grid, f_hat(s_grid), "k--", label=f"f-hat, paper a = {A_PAPER:.2f}")
    if res.a:
        a = res.a["vertex"]
        ax.plot(s_grid, f_hat(s_grid, a), "k-", label=f"f-hat, fitted a = {a:.2f}")
        iv = ((res.bootstrap or {}).get("a") or {}).get("vertex")
        if iv:
            lo, hi = f_hat(s_grid, iv[1]), f_hat(s_grid, iv[0])
            ax.fill_between(s_grid, lo, hi, color="grey", alpha=0.2, label="bootstrap interval")
    for b in sorted({o["bits"] for o in opt}):
        mine = [o for o in opt if o["bits"] == b]
        c, s = _colour(b), [o["S"] for o in mine]
        ax.plot(s, [o["f_vertex"] for o in mine], "o", color=c, label=f"{b}-bit vertex")
        ax.plot(
            s, [o["f_argmin"] for o in mine], "o", mfc="none", color=c, label=f"{b}-bit grid argmin"
        )
        ax.plot(s, [o["f_law"] for o in mine], "x", color=c, label=f"{b}-bit law argmin")
    ax.set(xscale="log", ylim=(0, 1), title="Optimal QAT fraction vs S: f-hat = exp(-a / ln S)")
    ax.set(xlabel="tokens per parameter-byte S = D / (N·B/8)", ylabel="optimal QAT fraction f*")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.savefig(path, dpi=110)
    return path


def plot_predicted_vs_observed(res: FitResult, rows: list[dict], path: Path) -> Path:
    """The law's prediction against every fitted run's final loss."""
    fig, (ax,) = _grid(1, 6, 5.5)
    fit_rows = [r for r in rows if is_fp_row(r) or float(r["D_fp"]) > 0 < float(r["D_qat"])]
    big = max((float(r["N"]) for r in fit_rows), default=0.0)
    obs = np.array([r["final_loss"] for r in fit_rows], float)
    bits = [None if is_fp_row(r) else int(r["bits"]) for r in fit_rows]
    pred = np.array(
        [predict(res.params, r["N"], r["D_fp"], r["D_qat"], b) for r, b in zip(fit_rows, bits)]
    )
    for k in sorted(set(bits), key=str):
        m = np.array([b == k for b in bits])
        c = "grey" if k is None else _colour(k)
        ax.plot(obs[m], pred[m], "s" if k is None else "o", color=c, ms=5,
                label="FP" if k is None else f"{k}-bit QAT")  # fmt: skip
    held = np.array([float(r["N"]) == big for r in fit_rows])
    if held.any():
        ax.plot(obs[held], pred[held], "o", mfc="none", mec="black", ms=9,
                label=f"largest N = {_si(big)} (held out in the check)")  # fmt: skip
    if len(obs):
        lo, hi = min(obs.min(), pred.min()), max(obs.max(), pred.max())
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="y = x")
    ax.set(xlabel="observed final loss", ylabel="predicted by the law")
    ax.set_title(f"Predicted vs observed (R² of log L = {res.r2_log:.4f})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return path


def plot_fused_vs_classic(res: FitResult, all_rows: list[dict], path: Path) -> Path | None:
    """Loss against f for fused and classic at each (N, D, bits) that has classic runs."""
    qat = _qat_rows(all_rows)
    classic = [r for r in qat if r.get("pipeline") == "classic"]
    if not classic:
        return None
    settings = sorted({_key(r["N"], r["D"], r["bits"]) for r in classic})[:MAX_PANELS]
    fig, axes = _grid(len(settings), 5, 3.8)
    for ax, (N, D, b) in zip(axes, settings):
        here = [r for r in qat if _key(r["N"], r["D"], r["bits"]) == (N, D, b)]
        for pipe, style in (("fused", "o-"), ("classic", "s--")):
            mine = sorted((r for r in here if r.get("pipeline", "fused") == pipe), key=row_fraction)
            if mine:
                _plot_runs(ax, mine, style, label=pipe)
        fs = np.geomspace(min(row_fraction(r) for r in here) / 1.5, 0.9, 100)
        law = predict(res.params, N, (1 - fs) * D, fs * D, b)
        ax.plot(fs, law, color="grey", lw=0.8, label="law (fused fit)")
        ax.set(xscale="log", xlabel="QAT fraction f", ylabel="final loss (nats/token)")
        ax.set_title(f"N = {_si(N)}, D = {_si(D)}, {int(b)} bits", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Fused vs classic pipeline at equal token budget")
    fig.savefig(path, dpi=110)
    return path


def plot_best_bits(res: FitResult, rows: list[dict], path: Path) -> Path | None:
    """Predicted loss per bit width over memory budgets, at the rows' token budgets."""
    qat = _qat_rows(rows)
    if not qat:
        return None
    budgets = sorted({_key(r["D"])[0] for r in qat})
    if len(budgets) > 3:
        budgets = [budgets[0], budgets[len(budgets) // 2], budgets[-1]]
    mem = [float(r["N"]) * float(r["bits"]) / 8 for r in qat]
    M = np.geomspace(min(mem) / 3, max(mem) * 3, 40)
    Figure = _mpl()
    fig = Figure(figsize=(5 * len(budgets), 5.5), layout="constrained")
    axes = fig.subplots(2, len(budgets), squeeze=False, height_ratios=[3, 1], sharex="col")
    for j, D in enumerate(budgets):
        top, bottom = axes[0, j], axes[1, j]
        curves = memory_curves(res.params, M, D=D)
        for b, (_, loss) in curves.items():
            top.plot(M, loss, "-", color=_colour(b), label=f"{b}-bit (law)")
        best = {}
        for r in qat:
            if _key(r["D"])[0] == D:
                k = (float(r["N"]), int(r["bits"]))
                best[k] = min(best.get(k, math.inf), float(r["final_loss"]))
        for (n, b), loss in sorted(best.items()):
            top.plot([n * b / 8], [loss], "o", color=_colour(b), mec="black")
        envelope = np.min([curves[b][1] for b in MEMORY_BITS], axis=0)
        _focus(top, [*envelope, envelope.max() + 0.5 * np.ptp(envelope), *best.values()])
        winners = np.array(MEMORY_BITS)[np.argmin([curves[b][1] for b in MEMORY_BITS], axis=0)]
        bottom.step(M, winners, where="mid", color="black")
        bottom.set(yticks=list(MEMORY_BITS), ylabel="best bits", xscale="log")
        bottom.set_xlabel("parameter memory M = N·B/8 (bytes)")
        top.set_ylabel("final loss at the law-optimal f")
        top.set_title(f"D = {_si(D)} tokens (dots: best observed run)", fontsize=10)
        for ax in (top, bottom):
            ax.grid(True, which="both", alpha=0.3)
        top.legend(fontsize=8)
    fig.suptitle("Best bit width vs memory budget (N = 8·M/B)")
    fig.savefig(path, dpi=110)
    return path


def write_plots(
    res: FitResult, rows: list[dict], out_dir, all_rows: list[dict] | None = None
) -> list[Path]:
    """Write every figure into `out_dir` (created); returns the paths written.

    Args:
        rows: the rows the law was fitted on (FP anchors and one pipeline's QAT runs).
        all_rows: every row, classic runs included (the fused-vs-classic figure).
    """
    _mpl()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [
        plot_loss_vs_fraction(res, rows, out / "loss_vs_fraction.png"),
        plot_optimal_fraction(res, out / "optimal_fraction_vs_S.png"),
        plot_predicted_vs_observed(res, rows, out / "predicted_vs_observed.png"),
        plot_fused_vs_classic(res, all_rows or rows, out / "fused_vs_classic.png"),
        plot_best_bits(res, rows, out / "best_bits_vs_memory.png"),
    ]
    return [p for p in paths if p is not None]
