"""mlx_qat.fit.optima: empirical optimal fractions and the fit of `a` in f̂ = exp(−a / ln S)."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mlx_qat.fit.law import f_hat
from mlx_qat.fit.optima import bootstrap_a, empirical_optima, fit_a, mae, parabola_vertex
from mlx_qat.fit.rows import parse_rows

GRID = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8)


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


def test_a_recovered_from_rows():
    """Rows whose per-group optimum sits at f̂(S; a = 5): the vertex optima give a = 5 exactly."""
    rows = []
    for N in (8e6, 16e6, 32e6):
        for B in (2, 4, 6):
            for tpp in (10, 40, 160, 640):
                D = N * tpp
                rows += curve_rows(N, D, B, f0=float(f_hat(D / (N * B / 8), 5.0)))
    opt = empirical_optima(parse_rows(rows))
    S = np.array([o.S for o in opt])
    inside = ~np.array([o.at_edge for o in opt])
    assert inside.sum() >= 30
    a_v = fit_a(S[inside], [o.f_vertex for o in opt if not o.at_edge])
    assert a_v == pytest.approx(5.0, rel=1e-6)
    # the grid argmin is off by up to half a grid cell in f: a within 15%
    assert fit_a(S, [o.f_argmin for o in opt]) == pytest.approx(5.0, rel=0.15)
