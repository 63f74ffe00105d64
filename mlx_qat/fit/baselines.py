"""Trivial predictors the law must beat on the held-out size, and the verdict in plain words.

The leave-largest-size-out check (`fitting`) refits the law without the largest size N_big and
predicts it. A law with 16 constants earns them only if it beats predictors with none:

- **nearest-size copy** (final loss): a held-out run at (D, bits, f) is predicted by the mean
  final loss over seeds of the fitted size nearest to N_big in ln N with a run at the same
  (D, bits, f) (D to 9 significant digits, f to 1e-6). Runs without such a twin are left out,
  and the law is scored on the same runs.
- **memory-matched bit choice** (`bit_choice_check`): the question a planner answers — at a
  fixed parameter memory N·B/8, fewer parameters at more bits or more at fewer? Each (D, bits)
  group of the held-out size is paired with the fitted size at the same D and another width
  whose memory is nearest (within 1.5×); the law picks the side whose best predicted loss over
  the group's fractions is lower, and is right when that side's best measured loss is lower.
  One side is always out of sample.
- **constant fraction** (optimal QAT fraction): every empirical optimum of the held-out size is
  predicted by f = `CONST_F` = 0.1 (ParetoQ's "about 10% QAT", which paper 000 argues against),
  scored like the law's argmin and f̂ (a fitted to the other sizes) by MAE in f, per kind of
  optimum (parabola vertex, grid argmin).

Where the law's held-out error lies (`error_split`): the held-out size's FP anchors are left
out of the fit too, so they score the law's FP term alone; the law's penalty L(QAT) − L(FP, same
D) added to the measured anchor scores the penalty alone, against the trivial penalty
baseline (the nearest size's measured L(QAT) − L(FP) added to the same anchor).
"""

from __future__ import annotations

import numpy as np

from .optima import group_keys, means_by_f
from .optima import mae as _mae
from .rows import Rows

CONST_F = 0.1
KINDS = ("vertex", "argmin")


def _d9(D) -> float:
    """D to 9 significant digits: two runs of one budget match although their counts differ."""
    return float(f"{float(D):.9g}")


def _key(D, bits, f) -> tuple:
    return (_d9(D), float(bits), round(float(f), 6))


def nearest_size_copy(train: Rows, test: Rows) -> tuple[np.ndarray, np.ndarray]:
    """The nearest-size copy of each QAT row of `test` (the held-out size) from the QAT rows
    of `train` (the other sizes): (prediction, source N) per test row, NaN where no fitted size
    has a run at the same (D, bits, f)."""
    have: dict[tuple, dict[float, list[float]]] = {}
    for N, D, b, f, loss in zip(train.N, train.D, train.bits, train.f, train.loss):
        if np.isnan(b) or f == 0:
            continue
        have.setdefault(_key(D, b, f), {}).setdefault(float(N), []).append(float(loss))
    pred = np.full(len(test), np.nan)
    src = np.full(len(test), np.nan)
    for i, (N, D, b, f) in enumerate(zip(test.N, test.D, test.bits, test.f)):
        sizes = have.get(_key(D, b, f))
        if not sizes:
            continue
        near = min(sizes, key=lambda n: (abs(np.log(n / N)), n))
        pred[i], src[i] = float(np.mean(sizes[near])), near
    return pred, src


def _fp_means(R: Rows) -> dict[tuple, float]:
    """Mean FP-anchor loss over seeds per (N, D) (D to 9 significant digits)."""
    out: dict[tuple, list[float]] = {}
    for N, D, loss in zip(R.N[R.fp], R.D[R.fp], R.loss[R.fp]):
        out.setdefault((float(N), _d9(D)), []).append(float(loss))
    return {k: float(np.mean(v)) for k, v in out.items()}


def error_split(train: Rows, test: Rows, fp_test: Rows, predict) -> dict | None:
    """The law's held-out error split into its FP term and its penalty (module docstring).

    Args:
        train, test: the fitted rows and the held-out size's QAT rows.
        fp_test: the held-out size's FP anchors (not fitted).
        predict: `predict(N, D_fp, D_qat, bits)` of the refitted law (vectorised; bits NaN: FP).

    Returns:
        None without an anchor at a held-out run's D; else {"fp": rel_errors of the FP term on
        the anchors, "penalty": {"law": rel_errors, "copy": rel_errors or None}} on the QAT runs
        that have an anchor (and, for "copy", a nearest-size twin with its own anchor).
    """
    anchors = _fp_means(fp_test)
    fp_pred = predict(fp_test.N, fp_test.D, np.zeros(len(fp_test)), np.full(len(fp_test), np.nan))
    meas = np.array([anchors.get((float(N), _d9(D)), np.nan) for N, D in zip(test.N, test.D)])
    ok = ~np.isnan(meas)
    if not ok.any():
        return None
    t = test.take(ok)
    law_pen = predict(t.N, t.D_fp, t.D_qat, t.bits) - predict(t.N, t.D, 0.0 * t.D, np.nan * t.D)
    penalty = {"law": rel_errors(meas[ok] + law_pen, t.loss), "copy": None}
    copy, src = nearest_size_copy(train, t)
    fitted = _fp_means(train)
    near_fp = np.array([fitted.get((float(n), _d9(D)), np.nan) for n, D in zip(src, t.D)])
    both = ~np.isnan(copy) & ~np.isnan(near_fp)
    if both.any():
        pred = meas[ok][both] + copy[both] - near_fp[both]
        penalty["copy"] = rel_errors(pred, t.loss[both])
    return {"fp": rel_errors(fp_pred, fp_test.loss), "penalty": penalty}


def rel_errors(pred, loss) -> dict:
    """{"n_rows", "mean_abs_rel_err", "max_abs_rel_err", "rmse_log"} of predictions of `loss`."""
    pred, loss = np.asarray(pred, float), np.asarray(loss, float)
    rel = np.abs(pred / loss - 1.0)
    return {
        "n_rows": int(len(loss)),
        "mean_abs_rel_err": float(rel.mean()),
        "max_abs_rel_err": float(rel.max()),
        "rmse_log": float(np.sqrt(np.mean(np.log(pred / loss) ** 2))),
    }


def copy_check(train: Rows, test: Rows, law_pred) -> dict | None:
    """The nearest-size copy's errors and the law's on the same held-out runs:
    {"from_N": [sizes copied from], **rel_errors(copy), "law": rel_errors(law)}, or None when
    no held-out run has a twin at a fitted size."""
    pred, src = nearest_size_copy(train, test)
    ok = ~np.isnan(pred)
    if not ok.any():
        return None
    out = {"from_N": sorted({float(s) for s in src[ok]}), **rel_errors(pred[ok], test.loss[ok])}
    out["law"] = rel_errors(np.asarray(law_pred, float)[ok], test.loss[ok])
    return out


def fraction_check(optima: dict, f_law, f_hat, const_f: float = CONST_F) -> dict:
    """MAE in f against the held-out size's empirical optima: the law, f̂, a constant.

    Args:
        optima: {kind: empirical optima of the held-out size} for kinds "vertex", "argmin".
        f_law: the refitted law's own argmin per optimum.
        f_hat: {kind: f̂ per optimum, with `a` fitted to the other sizes' optima of that kind}.
    Returns:
        {"n_optima", "const_f", "mae": {"law" | "f_hat" | "const": {kind: MAE}}}.
    """
    preds = {
        "law": dict.fromkeys(KINDS, f_law),
        "f_hat": f_hat,
        "const": dict.fromkeys(KINDS, const_f),
    }
    mae = {who: {k: _mae(p[k], optima[k]) for k in KINDS} for who, p in preds.items()}
    return {"n_optima": int(len(optima[KINDS[0]])), "const_f": const_f, "mae": mae}


def verdict(copy: dict | None, fraction: dict | None) -> tuple[dict, list[str]]:
    """Whether the law beats each baseline on the held-out size, and one sentence each
    (saying plainly "does NOT beat" unless the law is strictly better).

    The law beats the copy when its mean |relative error| on the same runs is lower; the law
    (or f̂) beats the constant fraction when its MAE is lower for both kinds of optimum.

    Returns:
        ({"copy": bool, "const_f_law": bool, "const_f_f_hat": bool} for the comparisons that
        could be made, [sentences]: the copy's first, also when it could not be made).
    """
    beats, lines = {}, []
    if copy is not None:
        law_err, copy_err = copy["law"]["mean_abs_rel_err"], copy["mean_abs_rel_err"]
        beats["copy"] = law_err < copy_err
        lines.append(
            f"held-out loss: the law (mean |error| {100 * law_err:.2f}%) "
            f"{'beats' if beats['copy'] else 'does NOT beat'} copying the nearest fitted size "
            f"({100 * copy_err:.2f}%) on {copy['n_rows']} runs"
        )
    else:
        lines.append(
            "held-out loss: no fitted size ran the held-out size's (D, bits, f): the "
            "nearest-size copy could not be scored, so the law's error stands without a baseline"
        )
    if fraction is not None:
        m, c = fraction["mae"], fraction["const_f"]
        for who, name in (("law", "the law's argmin"), ("f_hat", "f-hat (a from the other sizes)")):
            ok = all(m[who][k] < m["const"][k] for k in KINDS)
            beats[f"const_f_{who}"] = ok
            lines.append(
                f"held-out optimal fraction: {name} (MAE {m[who]['vertex']:.3f} vertex, "
                f"{m[who]['argmin']:.3f} argmin) {'beats' if ok else 'does NOT beat'} a constant "
                f"f = {c:g} ({m['const']['vertex']:.3f}, {m['const']['argmin']:.3f}) on "
                f"{fraction['n_optima']} optima"
            )
    return beats, lines


def _best_by_group(R: Rows, predict) -> dict[tuple, dict]:
    """{(D, N, bits): {"best": lowest loss over f (seeds averaged), "law_best": lowest
    `predict`ed loss over the same runs}} of the QAT rows of `R`."""
    R = R.take(R.qat)
    keys = group_keys(R)
    out = {}
    for N, D, bits in np.unique(keys, axis=0):
        g = np.all(keys == (N, D, bits), axis=1)
        best = min(means_by_f(R, g).values())
        out[(D, N, bits)] = {"best": best, "law_best": float(np.min(predict(R.take(g))))}
    return out


def bit_choice_check(train: Rows, test: Rows, predict, max_ratio: float = 1.5) -> list[dict]:
    """The memory-matched bit choice on the held-out size (module docstring).

    Args:
        predict: `predict(rows) -> losses`, the law refitted without `test`'s size.
    Returns:
        One dict per pair: {"D", "held" and "fitted": {"N", "bits", "memory_bytes", "best",
        "law_best"}, "measured": "held" | "fitted", "law": the side the law picks,
        "law_right"}; [] when no group has a partner.
    """
    held, fitted = _best_by_group(test, predict), _best_by_group(train, predict)
    pairs = []
    for (D, N, bits), h in sorted(held.items()):
        mem = N * bits / 8
        partners = [
            (abs(np.log(n * b / 8 / mem)), n, b) for d, n, b in fitted if d == D and b != bits
        ]
        if not partners or min(partners)[0] > np.log(max_ratio):
            continue
        _, n, b = min(partners)
        sides = {
            "held": {"N": N, "bits": bits, **h},
            "fitted": {"N": n, "bits": b, **fitted[(D, n, b)]},
        }
        for side in sides.values():
            side["memory_bytes"] = side["N"] * side["bits"] / 8
        measured = min(sides, key=lambda k: sides[k]["best"])
        picked = min(sides, key=lambda k: sides[k]["law_best"])
        pairs.append(
            {"D": D, **sides, "measured": measured, "law": picked, "law_right": measured == picked}
        )
    return pairs
