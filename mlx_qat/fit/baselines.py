"""Trivial predictors the law must beat on the held-out size, and the verdict in plain words.

The leave-largest-size-out check (`fitting`) refits the law without the largest size N_big and
predicts that size. A law with 16 constants earns them only if it predicts better than
predictors with none:

- **nearest-size copy** (final loss): a held-out run at (D, bits, f) is predicted by the final
  loss of the fitted size nearest to N_big in ln N that has a run at the same (D, bits, f)
  (mean over its seeds). D matches to 9 significant digits and f to 1e-6, as the sweep writes
  them. Runs without such a twin are left out of the comparison, and the law is scored on the
  same runs.
- **constant fraction** (optimal QAT fraction): every empirical optimum of the held-out size is
  predicted by f = `CONST_F` = 0.1 (ParetoQ's "about 10% QAT", which paper 000 argues against).
  The law's own argmin (from the refit) and f̂ = exp(−a / ln S) with `a` fitted to the other
  sizes' optima are scored against the same optima, by mean absolute error in f, for both
  kinds of optimum (parabola vertex, grid argmin).

`verdict` turns the numbers into one sentence per comparison, saying plainly "does NOT beat"
when the law (or f̂) is not strictly better than the baseline.
"""

from __future__ import annotations

import numpy as np

from .rows import Rows

CONST_F = 0.1
KINDS = ("vertex", "argmin")


def _key(D, bits, f) -> tuple:
    return (float(f"{float(D):.9g}"), float(bits), round(float(f), 6))


def nearest_size_copy(train: Rows, test: Rows) -> tuple[np.ndarray, np.ndarray]:
    """The nearest-size copy of each QAT row of `test` from the QAT rows of `train`.

    Args:
        train: the rows the law was refitted on (other sizes).
        test: the held-out rows (one size, QAT rows).
    Returns:
        (prediction, source N) per test row; NaN where no fitted size has a run at the same
        (D, bits, f).

    Example:
        >>> from mlx_qat.fit.rows import parse_rows
        >>> r = lambda N, loss: dict(N=N, D=1e6, D_fp=9e5, D_qat=1e5, bits=4, final_loss=loss)
        >>> pred, src = nearest_size_copy(parse_rows([r(1e5, 4.0), r(2e5, 3.5)]),
        ...                               parse_rows([r(4e5, 3.2)]))
        >>> float(pred[0]), float(src[0])
        (3.5, 200000.0)
    """
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
    """The nearest-size copy's errors and the law's on the same held-out runs.

    Returns:
        {"from_N": [sizes copied from], **rel_errors(copy), "law": rel_errors(law)}, or None
        when no held-out run has a twin at a fitted size.
    """
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
        const_f: the constant fraction.
    Returns:
        {"n_optima", "const_f", "mae": {"law" | "f_hat" | "const": {kind: MAE}}}.
    """
    mae = {"law": {}, "f_hat": {}, "const": {}}
    for k in KINDS:
        emp = np.asarray(optima[k], float)
        mae["law"][k] = float(np.mean(np.abs(np.asarray(f_law, float) - emp)))
        mae["f_hat"][k] = float(np.mean(np.abs(np.asarray(f_hat[k], float) - emp)))
        mae["const"][k] = float(np.mean(np.abs(const_f - emp)))
    return {"n_optima": int(len(optima[KINDS[0]])), "const_f": const_f, "mae": mae}


def _beats(a: dict, b: dict) -> bool:
    return all(a[k] < b[k] for k in KINDS)


def verdict(copy: dict | None, fraction: dict | None) -> tuple[dict, list[str]]:
    """Whether the law beats each baseline on the held-out size, and one sentence each.

    The law beats the copy when its mean |relative error| on the same runs is lower; the law
    (or f̂) beats the constant fraction when its MAE is lower for both kinds of optimum.

    Returns:
        ({"copy": bool, "const_f_law": bool, "const_f_f_hat": bool} for the comparisons that
        could be made, [sentences]: the copy's first, also when it could not be made).

    Example:
        >>> copy = {"mean_abs_rel_err": 0.01, "n_rows": 4, "law": {"mean_abs_rel_err": 0.03}}
        >>> verdict(copy, None)[1]
        ['held-out loss: the law (mean |error| 3.00%) does NOT beat copying the nearest fitted size (1.00%) on 4 runs']
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
            ok = _beats(m[who], m["const"])
            beats[f"const_f_{who}"] = ok
            lines.append(
                f"held-out optimal fraction: {name} (MAE {m[who]['vertex']:.3f} vertex, "
                f"{m[who]['argmin']:.3f} argmin) {'beats' if ok else 'does NOT beat'} a constant "
                f"f = {c:g} ({m['const']['vertex']:.3f}, {m['const']['argmin']:.3f}) on "
                f"{fraction['n_optima']} optima"
            )
    return beats, lines
