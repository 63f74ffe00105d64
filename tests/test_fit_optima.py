"""mlx_qat.fit.optima: empirical optimal fractions and the fit of `a` in f̂ = exp(−a / ln S)."""

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mlx_qat.fit.law import f_hat
from mlx_qat.fit.optima import empirical_optima, fit_a, mae, parabola_vertex
from mlx_qat.fit.rows import parse_rows

GRID = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8)


def bootstrap_a(S, f, n: int = 200, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of `fit_a` over `n` resamples (with replacement) of the optima."""
    S, f = np.asarray(S, float), np.asarray(f, float)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n):
        idx = rng.integers(0, len(S), len(S))
        if (S[idx] > 1.0).any():
            draws.append(fit_a(S[idx], f[idx]))
    q = (1.0 - level) / 2.0
    lo, hi = np.quantile(draws, [q, 1.0 - q])
    return float(lo), float(hi)


def curve_rows(N, D, bits, f0, fs=GRID, base=3.0, c=0.05, seeds=(0,)):
    """QAT rows whose loss is a parabola in ln f with its vertex at f0."""
    out = []
    for f in fs:
        for s in seeds:
            loss = base + c * (np.log(f) - np.log(f0)) ** 2 + 1e-4 * s
            out.append(
                dict(N=N, D=D, D_fp=(1 - f) * D, D_qat=f * D, bits=bits, final_loss=loss, seed=s)
            )
    return out


@settings(max_examples=50, deadline=None)
@given(
    x=st.lists(st.floats(-5, 5), min_size=3, max_size=3, unique=True),
    v=st.floats(-6, 6),
    c=st.floats(0.01, 10),
)
def test_parabola_vertex_exact(x, v, c):
    x = np.sort(np.array(x))
    assume(np.min(np.diff(x)) > 1e-2)
    y = c * (x - v) ** 2 + 1.0
    assert parabola_vertex(x, y) == pytest.approx(np.clip(v, x[0], x[2]), abs=1e-6)


def test_parabola_vertex_not_convex():
    assert parabola_vertex(np.array([0.0, 1.0, 2.0]), np.array([0.0, 1.0, 0.0])) == 1.0


def test_empirical_optima_argmin_and_vertex():
    rows = curve_rows(1e7, 1e9, 4, f0=0.27, seeds=(0, 1))  # seeds averaged
    rows += curve_rows(1e7, 1e9, 2, f0=0.03)  # below the grid: edge
    rows += curve_rows(2e7, 1e9, 4, f0=0.3, fs=(0.1, 0.2))  # too few fractions: skipped
    rows.append(dict(N=1e7, D=1e9, D_fp=1e9, D_qat=0, bits=None, final_loss=2.9))  # FP: ignored
    opt = empirical_optima(parse_rows(rows))
    assert [(o.bits, o.N) for o in opt] == [(2, 1e7), (4, 1e7)]
    edge, mid = opt
    assert edge.at_edge and edge.f_argmin == edge.f_vertex == 0.05
    assert not mid.at_edge and mid.f_argmin == 0.3 and mid.n_fractions == len(GRID)
    # the loss is exactly a parabola in ln f, so the 3-point vertex is exact
    assert mid.f_vertex == pytest.approx(0.27, rel=1e-9)
    assert mid.S == pytest.approx(1e9 / (1e7 * 4 / 8))


def test_groups_survive_float_noise_in_D():
    D = 3e9 + 0.1  # (1 − f)·D + f·D is not bit-exact D for every f
    opt = empirical_optima(parse_rows(curve_rows(1e7, D, 4, f0=0.4)))
    assert len(opt) == 1 and opt[0].f_vertex == pytest.approx(0.4, rel=1e-9)


@settings(max_examples=30, deadline=None)
@given(a=st.floats(1.0, 15.0))
def test_fit_a_exact(a):
    S = np.geomspace(5, 1e5, 12)
    assert fit_a(S, f_hat(S, a)) == pytest.approx(a, rel=1e-6)
    assert fit_a(S, f_hat(S, a), loss="l1") == pytest.approx(a, rel=1e-5)


def test_fit_a_noisy_and_bootstrap_covers():
    """40 optima with σ = 0.03 noise on f (a coarse grid's scatter): â within 0.5 of the truth.

    d f̂/da ≈ −f̂/ln S ≈ −0.05 over this S range, so σ/√40 ≈ 0.005 in f is ≈ 0.1 in a; 0.5 is 5σ.
    """
    rng = np.random.default_rng(1)
    S = np.exp(rng.uniform(np.log(20), np.log(5000), 40))
    f = np.clip(f_hat(S, 6.7297) + rng.normal(0, 0.03, S.size), 0.01, 0.99)
    a = fit_a(S, f)
    assert abs(a - 6.7297) < 0.5
    lo, hi = bootstrap_a(S, f, n=100, seed=0)
    assert lo < 6.7297 < hi and lo < a < hi
    assert mae(f_hat(S, a), f) < 0.04
    S_low = np.array([0.5, 1.0])
    with pytest.raises(ValueError, match="S > 1"):
        fit_a(S_low, [0.1, 0.1])


# The paper notes' table of f̂ at a = 6.7297 (shared/docs/research/paper000_compute_optimal_qat.md
# §4.2), as printed there (3 decimals): an independent reference for f̂ and the fit of `a`.
PAPER_TABLE = {10: 0.054, 20: 0.106, 50: 0.179, 100: 0.232, 200: 0.281, 500: 0.339, 1e3: 0.377,
               2e3: 0.413, 5e3: 0.454, 1e4: 0.482, 1e5: 0.557}  # fmt: skip
A_TOL = 0.3  # see test_a_recovered_from_noisy_rows


def closed_form_rows(a, seed, sigma=0.002):
    """Rows of 36 (N, D, bits) groups whose loss is 3 + 0.05·(ln f − ln f0)² + N(0, σ²), with
    f0 = exp(−a / ln S) written out here (not `law.f_hat`): the generator and the estimator
    share no code, so an error in f̂ cannot cancel out."""
    rng = np.random.default_rng(seed)
    rows = []
    for N in (8e6, 16e6, 32e6):
        for B in (2, 4, 6):
            for tpp in (10, 40, 160, 640):
                D = N * tpp
                f0 = math.exp(-a / math.log(D / (N * B / 8)))
                for f in GRID:
                    loss = 3.0 + 0.05 * math.log(f / f0) ** 2 + rng.normal(0, sigma)
                    rows.append(
                        dict(N=N, D=D, D_fp=(1 - f) * D, D_qat=f * D, bits=B, final_loss=loss)
                    )
    return rows


def a_of(rows) -> float:
    opt = empirical_optima(parse_rows(rows))
    return fit_a([o.S for o in opt], [o.f_vertex for o in opt])


def test_a_recovered_from_noisy_rows():
    """Rows from a known a (5.0, 6.5) plus noise σ = 0.002 on every loss give back that a to
    within A_TOL = 0.3, and are told apart from a wrong a 0.75 away.

    A_TOL, measured over 200 noise seeds per a: the estimate's mean is 4.96 (6.46), its standard
    deviation 0.075 (0.066) and its largest error 0.26 (0.29); the bias comes from the groups
    whose f0 lies below the grid's 0.05, where the optimum is censored at 0.05. So 0.3 is about
    4 standard deviations plus the bias, and a = 5.75 is 10 standard deviations from 5."""
    got = {a: a_of(closed_form_rows(a, seed=0)) for a in (5.0, 6.5)}
    for a, est in got.items():
        assert abs(est - a) < A_TOL, (a, est)
        for wrong in (a - 0.75, a + 0.75):
            assert abs(est - wrong) > A_TOL, (a, est, wrong)


def test_a_of_the_paper_table():
    """Optima at the notes' printed f̂(S) for a = 6.7297 (3 decimals: ±0.0005 in f, about
    ±0.01 in a): exact parabolas around them give a = 6.73 back, and f̂ reproduces the table."""
    rows = []
    for S, f0 in PAPER_TABLE.items():
        N, B = 1e7, 4
        D = S * N * B / 8
        for f in (0.5 * f0, 0.8 * f0, 1.25 * f0, 1.6 * f0):
            loss = 3.0 + 0.05 * math.log(f / f0) ** 2
            rows.append(dict(N=N, D=D, D_fp=(1 - f) * D, D_qat=f * D, bits=B, final_loss=loss))
    opt = empirical_optima(parse_rows(rows))
    assert [o.f_vertex for o in opt] == pytest.approx(sorted(PAPER_TABLE.values()), rel=1e-9)
    assert a_of(rows) == pytest.approx(6.7297, abs=0.03)
    S = np.array(list(PAPER_TABLE))
    assert np.round(f_hat(S, 6.7297), 3) == pytest.approx(list(PAPER_TABLE.values()), abs=1e-9)


def _twin_rows(f_loss, f_pen, N=1e5, D=1e6, bits=4, pipeline="fused"):
    """Rows whose final loss is an exact parabola in ln f with its vertex at `f_loss`, and
    whose QAT penalty is one with its vertex at `f_pen` (the twin's loss is their difference)."""
    rows = []
    for f in (0.025, 0.05, 0.1, 0.2, 0.3):
        loss = 3.0 + 0.02 * (math.log(f) - math.log(f_loss)) ** 2
        pen = 0.01 + 0.005 * (math.log(f) - math.log(f_pen)) ** 2
        rows.append({
            "N": N, "D": D, "D_fp": (1 - f) * D, "D_qat": f * D, "bits": bits,
            "final_loss": loss, "fp_twin_loss": loss - pen, "qat_penalty": pen,
            "pipeline": pipeline, "seed": 0,
        })  # fmt: skip
    return rows


def test_twin_optima_locate_the_loss_and_the_penalty_apart():
    """Closed form: the vertex of an exact parabola in ln f is its centre, so the loss's f*
    and the penalty's f* are recovered exactly, each from its own column."""
    from mlx_qat.fit.optima import twin_optima
    from mlx_qat.fit.report import _twins

    rows = _twin_rows(0.07, 0.15) + _twin_rows(0.2, 0.04, bits=2, pipeline="classic")
    fp = {"N": 1e5, "D": 1e6, "D_fp": 1e6, "D_qat": 0, "bits": None, "final_loss": 3.1}
    no_twin = {**rows[0], "qat_penalty": None, "D": 2e6, "D_fp": 2e6 * 0.975, "D_qat": 5e4}
    (c, f) = twin_optima([fp, no_twin, *rows])
    assert (f["pipeline"], f["bits"], c["pipeline"], c["bits"]) == ("fused", 4, "classic", 2)
    assert f["f_loss_vertex"] == pytest.approx(0.07) and f["f_loss_argmin"] == 0.05
    assert f["f_penalty_vertex"] == pytest.approx(0.15) and f["f_penalty_argmin"] == 0.2
    assert c["f_loss_vertex"] == pytest.approx(0.2) and c["f_penalty_vertex"] == pytest.approx(0.04)
    pen = 0.01 + 0.005 * math.log(0.2 / 0.15) ** 2  # the penalty at its grid argmin
    assert f["penalty_at_f"] == pytest.approx(pen)
    # worst f = 0.3, best on the grid f = 0.05
    assert f["loss_spread"] == pytest.approx(
        0.02 * (math.log(0.3 / 0.07) ** 2 - math.log(0.05 / 0.07) ** 2)
    )
    text = "\n".join(_twins([c, f]))
    assert "0.070 (0.050)" in text and "0.150 (0.200)" in text
    assert "agree in 0 of 2 groups" in text
    assert twin_optima([fp, no_twin]) == []
