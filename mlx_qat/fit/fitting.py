"""Fit the loss law to runs, and report how well it fits and predicts.

Staged fit (notes §5.3), each stage L-BFGS-B on the Huber-on-log-loss objective J of
`objective` (δ = 1e-3 by default):

1. FP term (E, A, α, B_c, β) on the FP rows, from a grid of 27 starts: E ∈ {0.3, 0.6, 0.9}·min L,
   α, β ∈ {0.2, 0.5, 1.0}, the rest of the loss split evenly between the two power terms.
2. The 11 penalty constants on the QAT rows with the FP term fixed, from a grid over the
   exponents (`PENALTY_GRID`, 16 starts), each penalty term starting at a third of the mean
   excess loss over the FP term.
3. All 16 jointly on FP + QAT rows from the best stage-2 point (FP rows weighted `fp_weight`).

Grid starts run at most `START_ITERS` L-BFGS-B iterations; the best one is then run to
convergence. QAT-from-scratch and PTQ rows are not fitted (see `rows`).

`fit` also reports R² and RMSE of log L, the leave-largest-size-out check against the trivial
baselines of `baselines`, the optima and `a` (`optima`) with the MAE of f̂, of the law's argmin
and of f = 0.1, and seeded bootstrap percentile intervals: each resample draws rows with
replacement within each kind (FP, QAT, from-scratch, PTQ), refits from the same fixed start
grid (a polish from the full-data estimate would pin constants at a bound), and re-derives `a`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable

import numpy as np

from . import baselines as bl
from . import law
from . import objective as ob
from .optima import a_from_rows, empirical_optima, fit_a, mae
from .result import FitResult
from .rows import Rows, parse_rows

log = logging.getLogger(__name__)

START_ITERS = 150  # L-BFGS-B iterations per grid start; the best start is then run to convergence
# A constant within this share of its box's width from a bound counts as at the bound: the rows
# did not determine it (e.g. alpha ~ 0: the loss does not depend on N), and the fit is degenerate.
AT_BOUND = 0.01
PENALTY_GRID = {"omega": (0.2, 0.8), "rho": (0.2, 0.8), "xi": (-1.0, 0.5), "chi": (0.3, 1.0)}
# stage-2 start of every penalty exponent; PENALTY_GRID overrides some of them
PENALTY_START = dict(kappa=0.5, chi=0.5, psi=0.0, omega=0.5, mu=0.5, nu=0.0, xi=0.0, rho=0.5)
KINDS = ("argmin", "vertex")


def _objective(rows: Rows, fp_tokens: str, delta: float, fp_weight: float, ref=None):
    feats, qat = law.features(rows.N, rows.D_fp, rows.D_qat, rows.bits, fp_tokens)
    if ref is None:
        ref = ob.reference(
            {k: v[qat] if k in ("B", "lnSqat", "lnSfp") else v for k, v in feats.items()}
        )
    w = np.where(qat, 1.0, fp_weight)
    return ob.Objective(feats, qat, rows.loss, w, ref, delta)


def fit_law(
    rows: Rows,
    fp_tokens: str = "total",
    huber_delta: float = 1e-3,
    fp_weight: float = 1.0,
    penalty_grid: dict | None = None,
    start: law.LawParams | None = None,
) -> tuple[law.LawParams, float]:
    """Fit the 16 constants to the fittable rows (FP rows and QAT rows with D_fp > 0).

    Args:
        fp_tokens: the FP term's token count, "total" (D) or "fp" (D_fp).
        fp_weight: weight of FP rows in the joint stage.
        penalty_grid: exponent name → start values for stage 2 (default `PENALTY_GRID`).
        start: skip stages 1-2 and polish jointly from these constants.
    Returns:
        (constants, J at the optimum).
    """
    grid = PENALTY_GRID if penalty_grid is None else penalty_grid
    bad = set(grid) - set(PENALTY_START)
    if bad:
        raise ValueError(
            f"penalty_grid: {sorted(bad)} are not penalty exponents {list(PENALTY_START)}"
        )
    rows = rows.take(rows.fittable)
    n_fp, n_qat = int(rows.fp.sum()), int(rows.qat.sum())
    if n_fp < 5 or n_qat < 11:
        raise ValueError(
            f"fit_law: {n_fp} FP rows and {n_qat} QAT rows; the FP term needs >= 5 FP runs "
            "(D_qat=0, bits null/16) and the penalties >= 11 QAT runs with D_fp > 0"
        )
    joint = _objective(rows, fp_tokens, huber_delta, fp_weight)
    box = ob.bounds(float(rows.loss.max()))
    everything = list(range(len(ob.NAMES)))
    if start is not None:
        return _fit_from(joint, ob.from_params(start, joint.ref), everything, box, fp_tokens)
    fp_obj = _objective(rows.take(rows.fp), fp_tokens, huber_delta, 1.0, joint.ref)
    theta = _stage_fp(fp_obj, box)
    qat_obj = _objective(rows.take(rows.qat), fp_tokens, huber_delta, 1.0, joint.ref)
    theta = _stage_penalties(qat_obj, theta, box, grid)
    return _fit_from(joint, theta, everything, box, fp_tokens)


def _fit_from(obj, theta, free, box, fp_tokens: str) -> tuple[law.LawParams, float]:
    theta, j = ob.minimize(obj, theta, free, box)
    return ob.to_params(theta, obj.ref, fp_tokens), j


def _best_start(obj: ob.Objective, starts, free: list[int], box) -> np.ndarray:
    """`START_ITERS` iterations from each start, then the best one run to convergence."""
    best = (np.inf, None)
    for theta in starts:
        th, j = ob.minimize(obj, theta, free, box, maxiter=START_ITERS)
        if j < best[0]:
            best = (j, th)
    return ob.minimize(obj, best[1], free, box)[0]


def _stage_fp(obj: ob.Objective, box) -> np.ndarray:
    free = [ob.INDEX[n] for n in ob.FP_NAMES]
    lmin, lmean = float(obj.loss.min()), float(obj.loss.mean())

    def starts():
        for e, alpha, beta in itertools.product((0.3, 0.6, 0.9), (0.2, 0.5, 1.0), (0.2, 0.5, 1.0)):
            theta = np.zeros(len(ob.NAMES))
            rest = max(lmean - e * lmin, 1e-3 * lmean) / 2.0
            theta[free] = (np.log(e * lmin), np.log(rest), alpha, np.log(rest), beta)
            yield theta

    return _best_start(obj, starts(), free, box)


def _stage_penalties(obj: ob.Objective, theta_fp, box, grid: dict) -> np.ndarray:
    fp_only = theta_fp.copy()
    fp_only[[ob.INDEX[c] for c in ("theta", "phi", "lam")]] = -30.0  # penalties off
    excess = float(np.mean(obj.loss - obj.predict(fp_only)))
    logc = np.log(max(excess, 1e-3 * float(obj.loss.mean())) / 3.0)

    def starts():
        for values in itertools.product(*grid.values()):
            theta = theta_fp.copy()
            for n in ("theta", "phi", "lam"):
                theta[ob.INDEX[n]] = logc
            for n, v in {**PENALTY_START, **dict(zip(grid, values))}.items():
                theta[ob.INDEX[n]] = v
            yield theta

    return _best_start(obj, starts(), [ob.INDEX[n] for n in ob.PENALTY_NAMES], box)


def fit(
    rows: Iterable[dict] | Rows,
    *,
    n_key: str = "N",
    fp_tokens: str = "total",
    huber_delta: float = 1e-3,
    fp_weight: float = 1.0,
    a_loss: str = "l2",
    holdout: bool = True,
    n_bootstrap: int = 200,
    seed: int = 0,
    level: float = 0.95,
    penalty_grid: dict | None = None,
) -> FitResult:
    """Fit the law and `a` to runs and report the fit (module docstring).

    Args:
        rows: row dicts (`rows` module schema, e.g. `load_rows("results.jsonl")`) or Rows.
        n_key: the row key with the parameter count.
        fp_tokens, huber_delta, fp_weight, penalty_grid: as in `fit_law`.
        a_loss: "l2" or "l1" for the fit of `a`.
        holdout: also refit without the largest size and predict it.
        n_bootstrap: bootstrap resamples (0 to skip); seed and level of the intervals.
    """
    if a_loss not in ("l2", "l1") or fp_tokens not in law.FP_TOKENS:
        raise ValueError(f"fit(a_loss={a_loss!r}, fp_tokens={fp_tokens!r}): use l2/l1, total/fp")
    if n_bootstrap < 0 or not 0.0 < level < 1.0:
        raise ValueError(f"fit(n_bootstrap={n_bootstrap}, level={level}): need >= 0 and in (0, 1)")
    R = rows if isinstance(rows, Rows) else parse_rows(rows, n_key)
    R, fp_repeats = fp_once(R)
    if fp_repeats:
        log.info("fit: %d FP row(s) repeat an earlier FP run and count once", fp_repeats)
    kw = dict(fp_tokens=fp_tokens, huber_delta=huber_delta, fp_weight=fp_weight)
    params, _ = fit_law(R, penalty_grid=penalty_grid, **kw)
    log.info("fitted the law on %d rows", int(R.fittable.sum()))
    res = FitResult(params, huber_delta, fp_weight, n_rows=_counts(R, fp_repeats))
    sizes = R.N[R.fittable]
    res.n_range = [float(sizes.min()), float(sizes.max())]
    res.degenerate = constants_at_bounds(params, R, fp_tokens)
    if res.degenerate:
        log.warning("fit: %s", degenerate_text(res.degenerate))
    res.r2_log, res.rmse_log = _r2_rmse(params, R.take(R.fittable))
    res.r2_log_qat, res.rmse_log_qat = _r2_rmse(params, R.take(R.qat))
    if holdout:
        res.holdout = _holdout(R, penalty_grid, a_loss, kw)
    _fractions(res, R, a_loss)
    if n_bootstrap > 0:
        res.bootstrap = _bootstrap(R, res, n_bootstrap, seed, level, a_loss, penalty_grid, kw)
    return res


def fp_once(R: Rows) -> tuple[Rows, int]:
    """(rows, number dropped): an FP row with the N, D, seed and final loss of an earlier FP
    row is the same run (older sweeps wrote it once per bit width) and is dropped."""
    keep, seen = np.ones(len(R), bool), set()
    for i in np.flatnonzero(R.fp):
        seed = None if np.isnan(R.seed[i]) else float(R.seed[i])
        key = (float(R.N[i]), float(R.D[i]), seed, float(R.loss[i]))
        keep[i] = key not in seen
        seen.add(key)
    return R.take(keep), int((~keep).sum())


def constants_at_bounds(params: law.LawParams, rows: Rows, fp_tokens: str = "total") -> list:
    """The constants at a bound of the fitter's box (within `AT_BOUND` of its width, in θ's
    coordinates), as [{"name", "value", "bound": "lower" | "upper"}]."""
    R = rows.take(rows.fittable)
    theta = ob.from_params(params, _objective(R, fp_tokens, 1e-3, 1.0).ref)
    out = []
    for name, v, (lo, hi) in zip(ob.NAMES, theta, ob.bounds(float(R.loss.max()))):
        tol = AT_BOUND * (hi - lo)
        side = "lower" if v <= lo + tol else "upper" if v >= hi - tol else None
        if side:
            out.append({"name": name, "value": float(getattr(params, name)), "bound": side})
    return out


def degenerate_text(degenerate: list) -> str:
    names = ", ".join(
        f"{d['name']} = {d['value']:.4g} (at its {d['bound']} bound)" for d in degenerate
    )
    why = ""
    if any(d["name"] in ("alpha", "A") for d in degenerate):
        why = " alpha or A at a bound: the fitted loss hardly depends on N, so model sizes are not ranked;"
    return (
        f"degenerate fit: {names}.{why} the rows do not determine these constants and "
        "predictions that lean on them are unreliable (add model sizes or budgets to the sweep)"
    )


def _counts(R: Rows, fp_repeats: int) -> dict:
    c = {k: int(getattr(R, k).sum()) for k in ("fittable", "fp", "qat", "from_scratch", "ptq")}
    c["fit"] = c.pop("fittable")
    return {**c, "fp_repeats": fp_repeats}


def _r2_rmse(params: law.LawParams, R: Rows) -> tuple[float, float]:
    if len(R) == 0:
        return float("nan"), float("nan")
    y = np.log(R.loss)
    r = np.log(law.predict(params, R.N, R.D_fp, R.D_qat, R.bits)) - y
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(r**2)) / ss_tot if ss_tot > 0 else float("nan")
    return r2, float(np.sqrt(np.mean(r**2)))


def _holdout(R: Rows, penalty_grid, a_loss: str, kw) -> dict | None:
    """Leave the largest size with QAT runs out (a larger FP-only anchor has no QAT loss to
    predict, and stays in the fit): refit on the other sizes, predict its QAT runs' loss and
    its empirical optima, and score the trivial baselines (`baselines`) on the same."""
    sizes = np.unique(R.N[R.fittable])
    qat_sizes = np.unique(R.N[R.fittable & R.qat])
    if len(sizes) < 2 or len(qat_sizes) == 0:
        return None
    big = qat_sizes[-1]
    test = R.take(R.qat & (R.N == big))
    train = R.take(R.N != big)
    try:
        params, _ = fit_law(train, penalty_grid=penalty_grid, **kw)
    except ValueError as e:
        log.warning("holdout skipped: %s", e)
        return None
    pred = law.predict(params, test.N, test.D_fp, test.D_qat, test.bits)
    out = {"N": float(big), **bl.rel_errors(pred, test.loss)}
    out["copy"] = bl.copy_check(train, test, pred)
    out["split"] = bl.error_split(
        train, test, R.take(R.fp & (R.N == big)), lambda *a: law.predict(params, *a)
    )
    out["fraction"] = _holdout_fraction(params, train, R.take(R.N == big), a_loss)
    out["bit_choice"] = bl.bit_choice_check(
        train, test, lambda r: law.predict(params, r.N, r.D_fp, r.D_qat, r.bits)
    )
    out["law_beats"], out["verdict"] = bl.verdict(out["copy"], out["fraction"])
    return out


def _optima_fractions(params: law.LawParams, optima) -> tuple:
    """S, {kind: empirical f} and the law's argmin f of each optimum."""
    S = np.array([o.S for o in optima])
    emp = {k: np.array([getattr(o, f"f_{k}") for o in optima]) for k in KINDS}
    cols = ([o.N for o in optima], [o.D for o in optima], [o.bits for o in optima])
    return S, emp, np.atleast_1d(law.optimal_fraction(params, *cols))


def _holdout_fraction(params: law.LawParams, train: Rows, big: Rows, a_loss: str) -> dict | None:
    """The held-out size's empirical optima against the refitted law's argmin, f̂ with `a`
    fitted to the other sizes' optima, and a constant f (`baselines.fraction_check`)."""
    optima = empirical_optima(big)
    if not optima or (a := a_from_rows(train, a_loss)) is None:
        return None
    S, emp, f_law = _optima_fractions(params, optima)
    f_hat = {k: np.atleast_1d(law.f_hat(S, a[k])) for k in KINDS}
    return {**bl.fraction_check(emp, f_law, f_hat), "a": a}


def _fractions(res: FitResult, R: Rows, a_loss: str) -> None:
    optima = empirical_optima(R)
    if not optima:
        return
    S, emp, f_law = _optima_fractions(res.params, optima)
    res.a = {k: fit_a(S, emp[k], a_loss) for k in KINDS}
    res.mae_f_hat = {k: mae(law.f_hat(S, res.a[k]), emp[k]) for k in KINDS}
    res.mae_f_hat_paper = {k: mae(law.f_hat(S), emp[k]) for k in KINDS}
    res.mae_law = {k: mae(f_law, emp[k]) for k in KINDS}
    res.mae_const_f = {k: mae(bl.CONST_F, emp[k]) for k in KINDS}
    f_vertex_hat = law.f_hat(S, res.a["vertex"])
    res.optima = [
        {**o.to_dict(), "f_law": float(fl), "f_hat": float(fh)}
        for o, fl, fh in zip(optima, f_law, np.atleast_1d(f_vertex_hat))
    ]


def _bootstrap(
    R: Rows, res: FitResult, n: int, seed: int, level: float, a_loss, penalty_grid, kw
) -> dict:
    """Percentile intervals over `n` resamples of the rows (module docstring)."""
    rng = np.random.default_rng(seed)
    kinds = (R.fp, R.qat, R.from_scratch, R.ptq)
    strata = [s for s in (np.flatnonzero(k) for k in kinds) if len(s)]
    draws, a_draws, failed, a_failed = [], [], 0, 0
    for _ in range(n):
        Rb = R.take(np.concatenate([rng.choice(s, len(s)) for s in strata]))
        try:
            p, _ = fit_law(Rb, penalty_grid=penalty_grid, **kw)
            draws.append([getattr(p, k) for k in ob.NAMES])
        except (ValueError, FloatingPointError):
            failed += 1
        a = a_from_rows(Rb, a_loss) if res.optima else None
        if a is None:
            a_failed += 1
        else:
            a_draws.append([a[k] for k in KINDS])
    q = (1.0 - level) / 2.0

    def interval(draws, names) -> dict:
        lo, hi = np.quantile(np.array(draws), [q, 1.0 - q], axis=0)
        return {k: [float(a), float(b)] for k, a, b in zip(names, lo, hi)}

    out = {"n": n, "seed": seed, "level": level, "n_failed": failed, "params": {}, "a": None}
    if draws:
        out["params"] = interval(draws, ob.NAMES)
    if a_draws:
        out["a"], out["n_failed_a"] = interval(a_draws, KINDS), a_failed
    return out
