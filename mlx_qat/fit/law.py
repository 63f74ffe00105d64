"""The loss law of paper 000 and the QAT fractions it implies.

For a model of N parameters trained on D_fp full-precision tokens and then D_qat QAT tokens at
B bits (D = D_fp + D_qat, f = D_qat / D), with tokens per parameter-byte

    S = D / (N·B/8),   S_qat = D_qat / (N·B/8),   S_fp = D_fp / (N·B/8),

the law is a Chinchilla-like FP term plus three QAT penalties:

    L(N, D_fp, D_qat, B) = E + A / N^α + B_c / D_*^β                      (FP term)
                         + θ · 2^(−κB)                                    (precision floor)
                         + φ · 2^(−χB) / (N^ψ · S_qat^ω)                  (too few QAT tokens)
                         + λ · 2^(−μB) · S_fp^ξ / (N^ν · S_qat^ρ)         (FP/QAT interaction)

16 constants. D_* is D (`fp_tokens="total"`, the notes' default: QAT tokens train the model as
well as FP ones) or D_fp (`fp_tokens="fp"`). ξ is free in sign (the notes' ξ'): ξ > 0 reads
"more FP training makes QAT harder", ξ < 0 is the paper's S_fp^|ξ| in the denominator. With
D_* = D the FP term does not depend on f, so an interior optimum f* < 1 needs the penalties to
rise as f → 1, which (for ω, ρ ≥ 0) only ξ < 0 gives: the fit decides. Pure-FP rows (bits
None/NaN or ≥ 16, D_qat = 0) get the FP term alone. All in float64, vectorised.

The closed-form QAT fraction (paper eq., natural log, valid for S > 1):

    f̂(S) = exp(−a / ln S),   a = 6.7297,   f̂ = 0 for S ≤ 1.

The law's own optimum `f*(N, D, B) = argmin_f L(N, (1−f)D, fD, B)` is found on x = logit f in
[logit 1e-4, logit(1 − 1e-4)]: a 129-point grid locates the best cell, then a golden-section
search on its two neighbouring cells refines it (the bracket shrinks below 1e-9 in x; a
flat minimum is resolved to ~sqrt(eps), about 1e-6 in f, by float64 losses). Without an
interior optimum it returns a bound of the range.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

A_PAPER = 6.7297  # the paper's fitted a for f̂ (same value as train.phase_plan.AUTO_A)
FP_BITS = 16  # bits at or above this (or None/NaN) mark a full-precision row
F_LO, F_HI = 1e-4, 1.0 - 1e-4  # search range of the law's optimal fraction

# The law as a table: term coefficient, then (exponent, feature, sign) factors, so that
# term = coef · exp(Σ sign · exponent · feature). Features: lnN, lnD (= ln D_*), B (= bits·ln 2),
# lnSqat, lnSfp. `penalty` terms apply to QAT rows only. law.predict and the fitter share it.
TERMS: tuple[tuple[str, tuple[tuple[str, str, int], ...], bool], ...] = (
    ("A", (("alpha", "lnN", -1),), False),
    ("B_c", (("beta", "lnD", -1),), False),
    ("theta", (("kappa", "B", -1),), True),
    ("phi", (("chi", "B", -1), ("psi", "lnN", -1), ("omega", "lnSqat", -1)), True),
    ("lam", (("mu", "B", -1), ("nu", "lnN", -1), ("xi", "lnSfp", +1), ("rho", "lnSqat", -1)), True),
)
FP_TOKENS = ("total", "fp")


@dataclass(frozen=True)
class LawParams:
    """The 16 constants of the law (module docstring) plus the FP term's token count;
    coefficients (E, A, B_c, theta, phi, lam) are ≥ 0."""

    E: float
    A: float
    alpha: float
    B_c: float
    beta: float
    theta: float
    kappa: float
    phi: float
    chi: float
    psi: float
    omega: float
    lam: float
    mu: float
    nu: float
    xi: float
    rho: float
    fp_tokens: str = "total"

    def __post_init__(self) -> None:
        if self.fp_tokens not in FP_TOKENS:
            raise ValueError(f"LawParams(fp_tokens={self.fp_tokens!r}): use one of {FP_TOKENS}")
        for name in ("E", "A", "B_c", "theta", "phi", "lam"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"LawParams({name}={getattr(self, name)}): must be >= 0")

    to_dict = asdict  # plain data (dataclasses.asdict)

    @classmethod
    def from_dict(cls, d: dict) -> LawParams:
        names = {f.name for f in fields(cls)}
        unknown, missing = set(d) - names, names - set(d) - {"fp_tokens"}
        if unknown or missing:
            raise ValueError(
                f"LawParams.from_dict: unknown keys {sorted(unknown)}, missing keys "
                f"{sorted(missing)}; expected {sorted(names)}"
            )
        return cls(**{k: (v if k == "fp_tokens" else float(v)) for k, v in d.items()})


def tokens_per_byte(D, N, bits):
    """S = D / (N·B/8): tokens per byte of B-bit parameters (vectorised)."""
    return np.asarray(D, float) / (np.asarray(N, float) * np.asarray(bits, float) / 8.0)


def f_hat(S, a: float = A_PAPER):
    """The closed form f̂ = exp(−a / ln S); 0 where S ≤ 1 (vectorised, floats in, floats out)."""
    S = np.asarray(S, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(S > 1.0, np.exp(-a / np.log(np.where(S > 1.0, S, 2.0))), 0.0)
    return out if out.ndim else float(out)


def bits_array(bits) -> np.ndarray:
    """Bits as float64 with None → NaN (an FP row)."""
    if bits is None:
        return np.array(np.nan)
    if isinstance(bits, list | tuple):
        return np.array([np.nan if b is None else b for b in bits], float)
    return np.asarray(bits, float)


def is_fp(bits) -> np.ndarray:
    """True where a row is full precision: bits None/NaN or ≥ 16."""
    b = bits_array(bits)
    return ~np.isfinite(b) | (b >= FP_BITS)


def features(N, D_fp, D_qat, bits, fp_tokens: str = "total") -> tuple[dict, np.ndarray]:
    """The law's log features of broadcast inputs, and the QAT-row mask. FP rows get finite
    placeholder features (their penalties are masked out); QAT with D_fp = 0 has lnSfp = −inf."""
    N, D_fp, D_qat = (np.asarray(x, float) for x in (N, D_fp, D_qat))
    b = bits_array(bits)
    N, D_fp, D_qat, b = np.broadcast_arrays(N, D_fp, D_qat, b)
    qat = ~is_fp(b)
    bq = np.where(qat, b, 8.0)
    byts = N * bq / 8.0
    with np.errstate(divide="ignore"):
        feats = {
            "lnN": np.log(N),
            "lnD": np.log(D_fp + D_qat if fp_tokens == "total" else D_fp),
            "B": bq * math.log(2.0),
            "lnSqat": np.where(qat, np.log(np.where(qat, D_qat, 1.0) / byts), 0.0),
            "lnSfp": np.where(qat, np.log(np.where(qat, D_fp, 1.0) / byts), 0.0),
        }
    return feats, qat


def term_values(params: LawParams, feats: dict, qat: np.ndarray) -> list[np.ndarray]:
    """Each term of the law (table order, excluding E), penalties zeroed on FP rows."""
    out = []
    for coef, factors, penalty in TERMS:
        expo = np.zeros_like(qat, dtype=float)
        for name, feat, sign in factors:
            p = getattr(params, name)
            if p != 0.0:  # x^0 = 1 even where the feature is ±inf (S_fp = 0)
                expo = expo + sign * p * feats[feat]
        c = getattr(params, coef)
        with np.errstate(over="ignore", invalid="ignore"):
            t = np.where(c > 0, c * np.exp(expo), 0.0)
        out.append(np.where(qat, t, 0.0) if penalty else t)
    return out


def predict(params: LawParams, N, D_fp, D_qat, bits):
    """The law's loss L(N, D_fp, D_qat, B), vectorised over broadcast inputs: float64 array
    (a float for scalar inputs); bits None/NaN or >= 16 marks a pure-FP row."""
    feats, qat = features(N, D_fp, D_qat, bits, params.fp_tokens)
    out = params.E + sum(term_values(params, feats, qat))
    return out if out.ndim else float(out)


def optimal_fraction(params: LawParams, N, D, bits):
    """The law's loss-optimal QAT fraction f* = argmin_f L(N, (1−f)·D, f·D, B), vectorised
    (module docstring)."""
    N, D, b = np.broadcast_arrays(np.asarray(N, float), np.asarray(D, float), bits_array(bits))
    if is_fp(b).any():
        raise ValueError("optimal_fraction: bits must be a QAT width (< 16) for every entry")
    lo, hi = math.log(F_LO / (1 - F_LO)), math.log(F_HI / (1 - F_HI))
    grid = np.linspace(lo, hi, 129)

    def loss(x):  # x: logit f, broadcast against N
        f = 1.0 / (1.0 + np.exp(-x))
        return np.asarray(predict(params, N, (1.0 - f) * D, f * D, b))

    fg = 1.0 / (1.0 + np.exp(-grid))  # the whole grid in one evaluation
    Ne, De, be = N[..., None], D[..., None], b[..., None]
    vals = np.asarray(predict(params, Ne, (1.0 - fg) * De, fg * De, be))
    i = np.argmin(np.where(np.isnan(vals), np.inf, vals), axis=-1)
    a, c = grid[np.maximum(i - 1, 0)], grid[np.minimum(i + 1, len(grid) - 1)]
    g = (math.sqrt(5.0) - 1.0) / 2.0
    x1, x2 = c - g * (c - a), a + g * (c - a)
    f1, f2 = loss(x1), loss(x2)
    for _ in range(50):  # 0.618^50 · 0.29 ≈ 1e-11
        left = f1 <= f2
        a, c = np.where(left, a, x1), np.where(left, x2, c)
        x1, x2 = np.where(left, c - g * (c - a), x2), np.where(left, x1, a + g * (c - a))
        f1, f2 = np.where(left, loss(x1), f2), np.where(left, f1, loss(x2))
    x = (a + c) / 2.0
    # the grid point itself may beat the interior (a minimum at a bound of the range)
    x = np.where(loss(grid[i]) < loss(x), grid[i], x)
    out = 1.0 / (1.0 + np.exp(-x))
    return out if out.ndim else float(out)


@dataclass(frozen=True)
class BitsOption:
    """One bit width under a memory budget: N = 8·M/B parameters, D tokens, f* and its loss."""

    bits: int
    N: float
    D: float
    S: float
    f: float
    loss: float

    to_dict = asdict  # plain data (dataclasses.asdict)


def best_bits_for_memory(
    M_bytes: float,
    law: LawParams,
    D: float | None = None,
    flops: float | None = None,
    bits: tuple[int, ...] = (2, 3, 4, 6, 8),
) -> list[BitsOption]:
    """The law's predicted loss for each bit width at a fixed parameter memory, side by side.

    At each B the model has N = 8·M/B parameters and trains on D tokens (fixed), or on
    D = C / (6·N) tokens (iso-FLOP, C = `flops`), at the law's own optimal QAT fraction.

    Args:
        M_bytes: parameter memory in bytes (N·B/8, the nominal width, no scale overhead).
        D: total tokens per run; or `flops`: compute C ≈ 6·N·D per run. Give exactly one.
    Returns:
        one BitsOption per width, in `bits` order.
    """
    if (D is None) == (flops is None):
        raise ValueError("best_bits_for_memory: give exactly one of D (tokens) or flops")
    if M_bytes <= 0:
        raise ValueError(f"best_bits_for_memory(M_bytes={M_bytes}): must be > 0")
    out = []
    for b in bits:
        n = 8.0 * M_bytes / b
        d = float(D) if D is not None else float(flops) / (6.0 * n)
        f = float(optimal_fraction(law, n, d, b))
        loss = float(predict(law, n, (1.0 - f) * d, f * d, b))
        out.append(BitsOption(int(b), n, d, float(tokens_per_byte(d, n, b)), f, loss))
    return out
