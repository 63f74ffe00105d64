"""Empirical optimal QAT fractions, and the fit of `a` in f̂ = exp(−a / ln S) to them.

A group is one (N, D, B) (to 9 significant digits: D_fp + D_qat may differ from D in the last
bits): QAT runs (from-scratch f = 1 included) at several fractions f = D_qat/D (rounded to 12
digits). Losses of runs at the same f (seeds) are averaged. With at least 3 distinct f:

- grid argmin: the f of the lowest mean loss;
- parabola vertex: with x = ln f, the parabola through the argmin and its two neighbours
  (exact interpolation of 3 points) has its vertex at x* = −b / (2c) for y = c x² + b x + k;
  f_vertex = exp(x*), clipped to the neighbours' range. At an edge of the grid (argmin is the
  smallest or largest f) there is no bracket and f_vertex = f_argmin (`at_edge` = True).

With float twins (rows with `qat_penalty` = final_loss − fp_twin_loss, the same schedule's
float loss), `twin_optima` locates the optima of the loss and of the penalty side by side: the
loss's mixes what f does to the schedule with what it does to quantization; the penalty's is
the second alone.

S = D / (N·B/8) per group. `a` minimises Σ (f̂(S_i; a) − f_i)² ("l2", default) or Σ |·|
("l1") over groups with S > 1: a 200-point grid in ln a over [0.01, 100], then a bounded
Brent search between the best grid point's neighbours. f̂ is monotone in a, so the objective
has one basin for realistic optima; the grid guards against the rest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .law import f_hat, tokens_per_byte
from .objective import require_scipy
from .rows import Rows, parse_rows

A_RANGE = (0.01, 100.0)


@dataclass(frozen=True)
class Optimum:
    """The empirical optimum of one (N, D, B) group."""

    N: float
    D: float
    bits: int
    S: float
    f_argmin: float
    f_vertex: float
    at_edge: bool
    n_fractions: int

    to_dict = asdict  # plain data (dataclasses.asdict)


def parabola_vertex(x: np.ndarray, y: np.ndarray) -> float:
    """Vertex of the parabola through 3 points (x sorted); the middle x if it is not convex."""
    c, b, _ = np.polyfit(x, y, 2)
    if not c > 0:
        return float(x[1])
    return float(np.clip(-b / (2.0 * c), x[0], x[2]))


def group_keys(R: Rows) -> np.ndarray:
    """(N, D, bits) of each row, to 9 significant digits (module docstring)."""
    keys = [[float(f"{v:.9g}") for v in row] for row in zip(R.N, R.D, R.bits)]
    return np.array(keys).reshape(-1, 3)


def means_by_f(R: Rows, g: np.ndarray) -> dict[float, float]:
    """{f: mean loss over seeds} of the rows in mask `g`, f ascending."""
    f = np.round(R.f[g], 12)  # same f up to float noise from D_fp + D_qat
    return {float(x): float(R.loss[g][f == x].mean()) for x in np.unique(f)}


def empirical_optima(rows: Rows, min_fractions: int = 3) -> list[Optimum]:
    """One Optimum per (N, D, bits) group of QAT runs (FP and PTQ rows ignored) with >=
    `min_fractions` distinct f, sorted by (bits, N, D)."""
    sub = rows.take(~rows.fp & (rows.D_qat > 0))
    keys = group_keys(sub)
    out = []
    for key in sorted({tuple(k) for k in keys}, key=lambda k: (k[2], k[0], k[1])):
        means = means_by_f(sub, np.all(keys == key, axis=1))
        if len(means) < min_fractions:
            continue
        fs, loss = np.array(list(means)), np.array(list(means.values()))
        i = int(np.argmin(loss))
        edge = i == 0 or i == len(fs) - 1
        if edge:
            fv = float(fs[i])
        else:
            fv = float(np.exp(parabola_vertex(np.log(fs[i - 1 : i + 2]), loss[i - 1 : i + 2])))
        n, d, b = key
        s = float(tokens_per_byte(d, n, b))
        out.append(Optimum(float(n), float(d), int(b), s, float(fs[i]), fv, edge, len(fs)))
    return out


def twin_optima(rows: list[dict], min_fractions: int = 3) -> list[dict]:
    """f* of the final loss and f* of the QAT penalty, per (pipeline, N, D, bits) group of the
    results rows (dicts) that have a float twin (`qat_penalty` not null; FP rows skipped).

    Returns:
        dicts sorted by (pipeline, bits, N, D): N, D, bits, S, n_fractions, "pipeline";
        `f_loss_*` / `f_penalty_*` for * in argmin, vertex (and `*_at_edge`); `penalty_at_f`:
        the mean penalty at the penalty's grid argmin; `loss_spread` and `fp_twin_spread`:
        max − min over f of the mean final loss and of the mean twin loss (a twin loss that
        moves with f is a schedule that moves with f).
    """
    twins = [r for r in rows if r.get("bits") is not None and r.get("qat_penalty") is not None]
    out = []
    for pipe in sorted({str(r.get("pipeline", "fused")) for r in twins}):
        group = [r for r in twins if str(r.get("pipeline", "fused")) == pipe]
        R = parse_rows(group)
        pen, twin = (
            Rows(R.N, R.D_fp, R.D_qat, R.bits, np.array([float(r[k]) for r in group]), R.seed)
            for k in ("qat_penalty", "fp_twin_loss")
        )
        with_loss = {(o.N, o.D, o.bits): o for o in empirical_optima(R, min_fractions)}
        keys = group_keys(R)
        for p in empirical_optima(pen, min_fractions):
            o = with_loss[(p.N, p.D, p.bits)]
            g = np.all(keys == (p.N, p.D, p.bits), axis=1)
            mean = {k: means_by_f(x, g) for k, x in (("loss", R), ("penalty", pen), ("twin", twin))}
            out.append({
                "pipeline": pipe, "N": p.N, "D": p.D, "bits": p.bits, "S": p.S,
                "n_fractions": p.n_fractions,
                "f_loss_argmin": o.f_argmin, "f_loss_vertex": o.f_vertex,
                "f_loss_at_edge": o.at_edge,
                "f_penalty_argmin": p.f_argmin, "f_penalty_vertex": p.f_vertex,
                "f_penalty_at_edge": p.at_edge,
                "penalty_at_f": mean["penalty"][round(p.f_argmin, 12)],
                "loss_spread": _spread(mean["loss"]),
                "fp_twin_spread": _spread(mean["twin"]),
            })  # fmt: skip
    return sorted(out, key=lambda d: (d["pipeline"], d["bits"], d["N"], d["D"]))


def _spread(means: dict[float, float]) -> float:
    return max(means.values()) - min(means.values())


def fit_a(S, f, loss: str = "l2") -> float:
    """The `a` of f̂ = exp(−a / ln S) that best matches optima f at S (points with S <= 1 skipped)."""
    if loss not in ("l2", "l1"):
        raise ValueError(f"fit_a(loss={loss!r}): use 'l2' or 'l1'")
    S, f = np.asarray(S, float), np.asarray(f, float)
    ok = S > 1.0
    if not ok.any():
        raise ValueError("fit_a: no optimum with S > 1 (f̂ is defined for S > 1 only)")
    S, f = S[ok], f[ok]
    power = 2 if loss == "l2" else 1

    def err(a: float) -> float:
        return float(np.sum(np.abs(f_hat(S, a) - f) ** power))

    grid = np.exp(np.linspace(np.log(A_RANGE[0]), np.log(A_RANGE[1]), 200))
    i = int(np.argmin([err(a) for a in grid]))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    opt = require_scipy()
    res = opt.minimize_scalar(err, bounds=(lo, hi), method="bounded", options={"xatol": 1e-9})
    return float(res.x) if res.fun <= err(grid[i]) else float(grid[i])


def mae(pred, target) -> float:
    """Mean absolute error."""
    return float(np.mean(np.abs(np.asarray(pred, float) - np.asarray(target, float))))


def a_from_rows(rows: Rows, loss: str = "l2") -> dict | None:
    """`a` fitted to the empirical optima of `rows`, per kind: {"argmin": a, "vertex": a}; None
    when the rows hold no optimum with S > 1."""
    optima = [o for o in empirical_optima(rows) if o.S > 1.0]
    if not optima:
        return None
    S = np.array([o.S for o in optima])
    return {k: fit_a(S, [getattr(o, f"f_{k}") for o in optima], loss) for k in ("argmin", "vertex")}
