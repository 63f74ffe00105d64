"""Loss curves of a run: training loss, the FP→QAT switch, and the eval series.

    >>> plot_run("runs/main")          # runs/main/loss.png (the CLI: `mlx_qat.train --plot`)

Needs matplotlib (`pip install 'mlx_qat[plot]'`); the import error says so.
"""

from __future__ import annotations

import os
from pathlib import Path

from .metrics import read_metrics


def pyplot():
    """matplotlib's pyplot on the Agg backend, or an ImportError naming the extra to install."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(
            "plotting needs matplotlib: pip install 'mlx_qat[plot]' (or pip install matplotlib)"
        ) from e
    return plt


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_run(
    run_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    twin_dir: str | os.PathLike | None = None,
) -> Path:
    """Draw `run_dir`'s loss curves to `out` (default `run_dir/loss.png`); returns the path:
    training loss, validation FP / PTQ / QAT (an FP twin, `run_dir/fp_twin` or `twin_dir`,
    dashed), the LR and the transition rate, with the switch (and the basin) marked."""
    plt = pyplot()
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "loss.png"
    train = read_metrics(run_dir, "train")
    if not train:
        raise ValueError(f"{run_dir}: no training records in metrics.jsonl to plot")
    tps = train[-1]["tokens"] / train[-1]["step"]
    trans = [r for r in train if "transition_rate" in r]  # the QAT phase's (transitions.py)
    extra = 1 if trans else 0
    fig, axes = plt.subplots(
        1, 3 + extra, figsize=(15 + 5 * extra, 4.5),
        gridspec_kw={"width_ratios": [3, 3, 1.4] + [2.6] * extra},
    )  # fmt: skip
    ax, ax_val, ax_lr = axes[:3]
    if trans:
        plot_transitions(axes[3], trans)
    x = [r["tokens"] for r in train]
    y = [float(r["loss"]) for r in train]
    ax.plot(x, y, color="0.8", lw=0.6, label="train loss")
    ax.plot(x, _smooth(y, max(1, len(y) // 50)), color="0.2", lw=1.2, label="train (smoothed)")
    lo = min(y[len(y) // 10 :] or y)
    ax.set_ylim(lo - 0.1, min(max(y), lo + 2.5))
    ax.set_title(f"{run_dir.name}: training loss")
    colors = {"fp": "tab:blue", "ptq": "tab:orange", "qat": "tab:red"}
    evals = read_metrics(run_dir, "eval")
    _eval_series(ax_val, evals, tps, colors, "-", "")
    twin = Path(twin_dir) if twin_dir else run_dir / "fp_twin"
    if (twin / "metrics.jsonl").exists():
        _eval_series(ax_val, read_metrics(twin, "eval"), tps, colors, "--", " (FP twin)", "qat")
    ax_val.set_title("validation loss (QAT = fake quant on, PTQ = RTN of the float weights)")
    vals = [r[m]["loss"] for r in evals for m in colors if r.get(m)]
    if vals:  # zoom on the second half, where the FP / PTQ / QAT gaps are visible
        late = [r[m]["loss"] for r in evals[len(evals) // 2 :] for m in colors if r.get(m)]
        ax_val.set_ylim(min(late) - 0.02, max(late) + 0.5 * (max(late) - min(late)) + 0.02)
    plot_basin(ax_val, run_dir, evals, tps)
    for a in (ax, ax_val):
        for r in read_metrics(run_dir, "switch"):
            a.axvline(r["step"] * tps, color="k", ls=":", lw=1)
            a.text(r["step"] * tps, a.get_ylim()[1], " FP→QAT", va="top", fontsize=8)
        a.set_xlabel("tokens")
        a.set_ylabel("loss (nats/token)")
        a.legend(fontsize=7)
    ax_lr.plot(x, [r["lr"] for r in train], color="tab:green")
    ax_lr.set_xlabel("tokens")
    ax_lr.set_title("learning rate")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _eval_series(ax, evals, tps, colors, ls, suffix, skip=None) -> None:
    for mode, color in colors.items():
        pts = [(r["step"] * tps, r[mode]["loss"]) for r in evals if r.get(mode)]
        if pts and mode != skip:
            ms = 5 if mode == "qat" else 3
            ax.plot(*zip(*pts), ls=ls, marker="o", ms=ms, color=color, label=f"{mode}{suffix}")


def plot_basin(ax, run_dir: Path, evals: list[dict], tps: float) -> None:
    """The basin level and re-entry on the validation axis `ax`, the inward cosine on a right
    one (`basin.py`)."""
    ref = read_metrics(run_dir, "basin_reference")
    for r in ref[-1:]:
        level = r["ref_loss"] + r["eps"]
        ax.axhline(level, color="tab:blue", ls=":", lw=1, label="basin level (FP at switch + ε)")
        lo, hi = ax.get_ylim()  # keep the level in view of the zoomed axis
        ax.set_ylim(min(lo, level - 0.02), max(hi, level + 0.02))
    for r in read_metrics(run_dir, "basin_reentry"):
        ax.axvline(r["step"] * tps, color="tab:green", ls="--", lw=1, label="basin re-entry")
    pts = [
        (r["step"] * tps, r["inward_cos"]) for r in ref + evals if r.get("inward_cos") is not None
    ]
    if pts:
        right = ax.twinx()
        right.plot(*zip(*pts), "s-", color="0.45", ms=3, lw=0.8, label="inward cos (right)")
        right.axhline(0.0, color="0.75", lw=0.6)
        right.set_ylabel("cos(−g, w_fp − Q(w))")
        right.legend(fontsize=7, loc="center right")


def plot_transitions(ax, train: list[dict]) -> None:
    """The QAT phase's transition rate, its EMA and, with TRS, R and (right axis) U on `ax`."""
    x = [r["tokens"] for r in train]
    ax.plot(x, [r["transition_rate"] for r in train], color="0.75", lw=0.6, label="rate k")
    ax.plot(x, [r["transition_rate_ema"] for r in train], color="tab:purple", label="EMA K")
    if "trs_target" in train[0]:
        ax.plot(x, [r["trs_target"] for r in train], "--", color="k", lw=1, label="target R")
        ax_u = ax.twinx()
        ax_u.plot(x, [r["trs_u"] for r in train], color="tab:green", lw=1.2, label="TRS U")
        ax_u.plot(x, [r["lr"] for r in train], ":", color="tab:green", lw=1, label="schedule LR")
        ax_u.set_ylabel("learning rate")
        ax_u.legend(fontsize=7, loc="upper right")
    ax.set_xlabel("tokens")
    ax.set_ylabel("fraction of codes changed per step")
    ax.set_title("QAT transition rate")
    ax.legend(fontsize=7, loc="upper left")
