"""mlx_qat.fit.law: the loss law, f̂, the law's optimal fraction and the memory-budget choice.

References are independent: a plain-Python transcription of the law, the notes' table of f̂,
closed forms, a brute-force grid over f, and hand-computed losses.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlx_qat.fit.law import (
    F_HI,
    F_LO,
    LawParams,
    best_bits_for_memory,
    f_hat,
    optimal_fraction,
    predict,
    tokens_per_byte,
)

TRUE = LawParams(
    E=1.8, A=300.0, alpha=0.35, B_c=600.0, beta=0.3, theta=0.4, kappa=0.7, phi=3.0, chi=0.4,
    psi=0.1, omega=0.3, lam=1000.0, mu=0.5, nu=0.1, xi=-1.5, rho=0.3,
)  # fmt: skip


def law_reference(p: LawParams, N, D_fp, D_qat, B):
    """The law written out term by term in plain Python (one row)."""
    D = D_fp + D_qat
    fp = p.E + p.A / N**p.alpha + p.B_c / (D if p.fp_tokens == "total" else D_fp) ** p.beta
    if B is None or B >= 16:
        return fp
    s_qat, s_fp = D_qat / (N * B / 8), D_fp / (N * B / 8)
    return (
        fp
        + p.theta * 2 ** (-p.kappa * B)
        + p.phi * 2 ** (-p.chi * B) / (N**p.psi * s_qat**p.omega)
        + p.lam * 2 ** (-p.mu * B) * s_fp**p.xi / (N**p.nu * s_qat**p.rho)
    )


positive = st.floats(1e-3, 1e3)
exponent = st.floats(-1.0, 1.5)
law_params = st.builds(
    LawParams,
    E=st.floats(0.5, 3), A=positive, alpha=st.floats(0, 1), B_c=positive, beta=st.floats(0, 1),
    theta=positive, kappa=exponent, phi=positive, chi=exponent, psi=exponent, omega=exponent,
    lam=positive, mu=exponent, nu=exponent, xi=st.floats(-2, 2), rho=exponent,
    fp_tokens=st.sampled_from(["total", "fp"]),
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    p=law_params,
    N=st.floats(1e6, 1e10),
    D=st.floats(1e7, 1e12),
    f=st.floats(0.01, 0.99),
    B=st.sampled_from([1, 2, 3, 4, 6, 8, None, 16]),
)
def test_predict_matches_reference(p, N, D, f, B):
    D_fp, D_qat = (1 - f) * D, f * D
    if B is None or B >= 16:
        D_fp, D_qat = D, 0.0
    want = law_reference(p, N, D_fp, D_qat, B)
    assert predict(p, N, D_fp, D_qat, B) == pytest.approx(want, rel=1e-10)


def test_predict_vectorised_and_fp_rows():
    N = np.array([1e7, 2e7, 4e7, 1e7])
    D_fp = np.array([1e9, 2e9, 3e9, 4e9])
    D_qat = np.array([1e8, 5e8, 0.0, 0.0])
    bits = [2, 4, None, 16]
    got = predict(TRUE, N, D_fp, D_qat, bits)
    want = [law_reference(TRUE, *row) for row in zip(N, D_fp, D_qat, bits)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # FP rows: the Chinchilla term alone, whatever the penalties
    assert got[2] == pytest.approx(1.8 + 300 / 4e7**0.35 + 600 / 3e9**0.3, rel=1e-12)


def test_qat_from_scratch_edge():
    """D_fp = 0: S_fp^ξ is 0 for ξ > 0, 1 for ξ = 0, +inf for ξ < 0 (paper's reading)."""
    import dataclasses

    args = (1e7, 0.0, 1e9, 4)
    assert predict(TRUE, *args) == math.inf
    no_lam = dataclasses.replace(TRUE, lam=0.0)
    pos = dataclasses.replace(TRUE, xi=0.5)
    assert predict(pos, *args) == pytest.approx(predict(no_lam, *args), rel=1e-12)
    zero = dataclasses.replace(TRUE, xi=0.0)
    s_qat = 1e9 / (1e7 * 4 / 8)
    extra = 1000 * 2 ** (-0.5 * 4) / (1e7**0.1 * s_qat**0.3)
    assert predict(zero, *args) == pytest.approx(predict(no_lam, *args) + extra, rel=1e-12)


def test_f_hat_matches_notes_table():
    S = [10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 1e5]
    table = [0.054, 0.106, 0.179, 0.232, 0.281, 0.339, 0.377, 0.413, 0.454, 0.482, 0.557]
    np.testing.assert_allclose(f_hat(np.array(S)), table, atol=5e-4)
    assert f_hat(1.0) == 0.0 and f_hat(0.5) == 0.0
    assert tokens_per_byte(2e9, 1e8, 4) == pytest.approx(40.0)


@settings(max_examples=40, deadline=None)
@given(a=st.floats(0.5, 20), S=st.floats(1.01, 1e6), k=st.floats(1.01, 10))
def test_f_hat_monotone(a, S, k):
    # (≥ 0, not > 0: exp(−a/ln S) underflows just above S = 1)
    assert 0.0 <= f_hat(S, a) <= f_hat(S * k, a) < 1.0
    assert f_hat(S, a) >= f_hat(S, a * 1.5)


def test_optimal_fraction_closed_form():
    """Only the interaction term depends on f: L ∝ (1−f)^ξ f^(−ρ), minimal at ρ/(ρ − ξ)."""
    for xi, rho in [(-1.0, 1.0), (-1.5, 0.3), (-0.2, 0.6)]:
        p = LawParams(2, 1, 0.3, 1, 0.3, 0.1, 1, 0, 0, 0, 0, 5.0, 0.5, 0.1, xi, rho)
        got = optimal_fraction(p, 1e7, 1e9, 4)
        # float64 resolves a flat minimum to ~sqrt(eps) in x, i.e. ~1e-6 in f
        assert got == pytest.approx(rho / (rho - xi), abs=1e-5)


@settings(max_examples=40, deadline=None)
@given(p=law_params, N=st.floats(1e6, 1e9), tpp=st.floats(2, 2000), B=st.sampled_from([1, 2, 4, 6]))
def test_optimal_fraction_matches_brute_force(p, N, tpp, B):
    D = N * tpp
    f = np.linspace(F_LO, F_HI, 200_001)
    losses = np.asarray(predict(p, N, (1 - f) * D, f * D, B))
    i = int(np.argmin(losses))
    got = optimal_fraction(p, N, D, B)
    lo = predict(p, N, (1 - got) * D, got * D, B)
    # never worse than the grid; where the minimum is sharp, at the same place
    assert lo <= losses[i] * (1 + 1e-12)
    h = 1e-3
    if 0 < i < len(f) - 1 and min(losses[max(i - 200, 0)], losses[min(i + 200, len(f) - 1)]) > (
        losses[i] * (1 + 1e-9)
    ):
        assert abs(got - f[i]) < h


def test_optimal_fraction_vectorised():
    N = np.array([1e7, 1e8, 1e9])[:, None]
    D = np.array([1e9, 1e10, 1e11])[None, :]
    got = optimal_fraction(TRUE, N, D, 4)
    assert got.shape == (3, 3)
    for i in range(3):
        for j in range(3):
            assert got[i, j] == pytest.approx(optimal_fraction(TRUE, N[i, 0], D[0, j], 4), abs=1e-9)
    # the law's shape: f* grows with D, falls with N and with B
    assert np.all(np.diff(got, axis=1) > 0) and np.all(np.diff(got, axis=0) < 0)
    assert optimal_fraction(TRUE, 1e7, 1e10, 2) > optimal_fraction(TRUE, 1e7, 1e10, 6)
    with pytest.raises(ValueError, match="QAT width"):
        optimal_fraction(TRUE, 1e7, 1e9, None)


# Hand case: E = 2, A/N with A = 1e6, α = 1; θ·2^(−B) with θ = 4; interaction λ = 1,
# ξ = −1, ρ = 1 (f* = 1/2, term = 1/(S_fp·S_qat) = 4/S²); no data term, no φ term.
HAND = LawParams(2, 1e6, 1, 0, 0, 4, 1, 0, 0, 0, 0, 1, 0, 0, -1, 1)


def test_best_bits_fixed_tokens_hand_computed():
    # M = 1e6 bytes → N = 8e6/B; A/N = B/8; D = 1e8 → S = D/M = 100 for every B; λ term 4e-4
    opts = best_bits_for_memory(1e6, HAND, D=1e8)
    want = {2: 2 + 0.25 + 1 + 4e-4, 3: 2 + 0.375 + 0.5 + 4e-4, 4: 2 + 0.5 + 0.25 + 4e-4}
    want.update({6: 2 + 0.75 + 0.0625 + 4e-4, 8: 2 + 1 + 0.015625 + 4e-4})
    assert [o.bits for o in opts] == [2, 3, 4, 6, 8]
    for o in opts:
        assert o.loss == pytest.approx(want[o.bits], rel=1e-9)
        assert o.N == pytest.approx(8e6 / o.bits) and o.S == pytest.approx(100.0)
        assert o.f == pytest.approx(0.5, abs=1e-5) and o.D == 1e8
    assert min(opts, key=lambda o: o.loss).bits == 4


def test_best_bits_iso_flop_hand_computed():
    # C = 6e14: D = C/(6N) = 1e8·B/8, S = D/M = 12.5·B, λ term 4/S²
    opts = best_bits_for_memory(1e6, HAND, flops=6e14, bits=(2, 4, 8))
    want = [2 + 0.25 + 1 + 4 / 25**2, 2 + 0.5 + 0.25 + 4 / 50**2, 2 + 1 + 0.015625 + 4 / 100**2]
    np.testing.assert_allclose([o.loss for o in opts], want, rtol=1e-9)
    np.testing.assert_allclose([o.D for o in opts], [2.5e7, 5e7, 1e8])
    assert opts[1].to_dict()["bits"] == 4
    with pytest.raises(ValueError, match="exactly one"):
        best_bits_for_memory(1e6, HAND, D=1e8, flops=1e15)
    with pytest.raises(ValueError, match="exactly one"):
        best_bits_for_memory(1e6, HAND)


@settings(max_examples=30, deadline=None)
@given(p=law_params)
def test_params_dict_round_trip(p):
    assert LawParams.from_dict(p.to_dict()) == p


def test_params_validation():
    d = TRUE.to_dict()
    with pytest.raises(ValueError, match="unknown keys"):
        LawParams.from_dict({**d, "zeta": 1.0})
    d.pop("rho")
    with pytest.raises(ValueError, match="missing keys.*rho"):
        LawParams.from_dict(d)
    with pytest.raises(ValueError, match="phi"):
        LawParams(**{**TRUE.to_dict(), "phi": -1.0})
    with pytest.raises(ValueError, match="fp_tokens"):
        LawParams(**{**TRUE.to_dict(), "fp_tokens": "qat"})
