"""Awkward inputs for the kernel checks (kernel_check.py, the C++-build tests), and bitwise
comparison helpers. Every family is a deterministic (rows, 384) float32 array (384: a multiple
of 32, 64 and 128) hitting the edges of MLX's grid: all-negative groups (where MLX's GPU
quantizer would differ), constant groups and zeros (the 1e-7 scale floor and q0 = 0), exact .5
ties of (w − b)/s, outliers, tiny and mixed magnitudes.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from .learned_affine import init_params

K = 384


def _groups(a: np.ndarray, gs: int) -> np.ndarray:
    return a.reshape(a.shape[0], -1, gs)


def minmax_families(bits: int, gs: int, seed: int = 0, rows: int = 4) -> dict[str, np.ndarray]:
    """name -> float32 (rows, K) weights for the min/max quantizer."""
    r = np.random.default_rng(seed)
    n = 2**bits - 1
    shape = (rows, K)
    fam = {
        "normal": r.normal(0, 0.02, shape),
        "uniform": r.uniform(-1, 1, shape),
        "all_negative": -np.abs(r.normal(0, 0.02, shape)) - 1e-3,
        "all_positive": np.abs(r.normal(0, 1, shape)) + 0.5,
        "zeros": np.where(r.random(shape) < 0.5, 0.0, -0.0),
        "tiny": r.normal(0, 1e-9, shape),
        "outliers": r.normal(0, 0.02, shape) * np.where(r.random(shape) < 0.01, 50.0, 1.0),
    }
    const = np.repeat(r.choice([0.37, -1.25, 3e-8, -(2.0**-20)], size=(rows, K // gs)), gs, axis=1)
    fam["constant"] = const
    mags = np.repeat(10.0 ** r.uniform(-4, 3, size=(rows, K // gs)), gs, axis=1)
    fam["mixed_magnitude"] = r.normal(0, 1, shape) * mags
    # (w - b)/s lands exactly on j + 0.5: range [0, n·δ] with δ a power of two gives s = -δ.
    delta = 2.0**-6
    ties = (r.integers(0, n, size=shape) + 0.5) * delta
    g = _groups(ties, gs)
    g[..., 0], g[..., 1] = 0.0, n * delta
    fam["ties"] = ties
    return {k: v.astype(np.float32) for k, v in fam.items()}


def fp_families(seed: int = 0, rows: int = 4) -> dict[str, np.ndarray]:
    """name -> float32 (rows, K) weights aimed at the microscaling formats' edges."""
    r = np.random.default_rng(seed)
    shape = (rows, K)
    sign = np.where(r.random(shape) < 0.5, -1.0, 1.0)
    k = np.repeat(r.integers(-8, 8, size=(rows, K // 16)), 16, axis=1)
    # FP4 midpoints (x exactly between two e2m1 levels) with max|g| = 6·2^k: e = k exactly.
    mids = r.choice([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], size=shape) * sign
    mids[:, ::16] = 6.0
    # e4m3 midpoints (1 + (2m+1)/16)·2^j and powers of two.
    fp8 = (1 + (2 * r.integers(0, 8, size=shape) + 1) / 16) * 2.0 ** r.integers(-9, 8, shape)
    return {
        "fp4_ties": (mids * 2.0**k).astype(np.float32),
        "fp8_ties": (fp8 * sign).astype(np.float32),
        "powers_of_two": (sign * 2.0 ** r.integers(-20, 10, shape)).astype(np.float32),
        "large": r.normal(0, 2e3, shape).astype(np.float32),
        "subnormal": (r.normal(0, 1, shape) * 1e-39).astype(np.float32),
    }


def stacked(families: dict[str, np.ndarray], dtype: mx.Dtype) -> mx.array:
    """All families as one (rows·F, K) array in `dtype`."""
    return mx.array(np.concatenate(list(families.values()), axis=0)).astype(dtype)


def lsq_case(bits: int, gs: int, per: str, seed: int = 0, rows: int = 6):
    """(w float32 (rows, K), α) with clipping, tiny α (< ALPHA_MIN) and exact ties."""
    r = np.random.default_rng(seed)
    w = r.normal(0, 0.02, (rows, K))
    qp = max(2 ** (bits - 1) - 1, 1)
    n_alpha = K // gs if per == "group" else 1
    base = np.abs(_groups(w, gs)).max(axis=-1) / qp  # per group
    alpha = base if per == "group" else base.max(axis=-1, keepdims=True)
    alpha = alpha * r.uniform(0.4, 1.3, alpha.shape)
    alpha[0] = 1e-7  # below ALPHA_MIN: clamped in the forward
    # ties: α = 2^-5 and w = (k + ½)·α
    alpha[1] = 2.0**-5
    w[1] = (r.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), K) + 0.5) * 2.0**-5
    assert alpha.shape == (rows, n_alpha)
    return mx.array(w.astype(np.float32)), mx.array(alpha.astype(np.float32))


def learned_case(bits: int, gs: int, seed: int = 0, rows: int = 6):
    """(w, scale, bias) float32: min/max init perturbed, negative and tiny (< 1e-7) scales."""
    r = np.random.default_rng(seed)
    w = mx.array(r.normal(0, 0.02, (rows, K)).astype(np.float32))
    s, b = (np.array(a) for a in init_params(w, bits, gs))
    s = s * r.uniform(0.6, 1.4, s.shape)
    b = b + r.normal(0, 0.01, b.shape)
    s[0, 0], s[0, 1], s[1, 0] = 3e-8, -2e-8, 0.0
    return w, mx.array(s.astype(np.float32)), mx.array(b.astype(np.float32))


def bits_of(a: mx.array) -> np.ndarray:
    """Raw bit pattern (uint16/uint32) of a float array, for bitwise comparisons."""
    return np.array(a.view(mx.uint32 if a.dtype == mx.float32 else mx.uint16))


def mismatches(a: mx.array, b: mx.array) -> int:
    """Number of elements whose bit patterns differ (shapes and dtypes must agree)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"{a.shape}/{a.dtype} vs {b.shape}/{b.dtype}")
    return int((bits_of(a) != bits_of(b)).sum())


def nonfinite_case(rows: int = 8, seed: int = 5) -> np.ndarray:
    """float32 (rows, K): NaN, ±inf and ±0 sprinkled over normal weights, all-±0 rows."""
    r = np.random.default_rng(seed)
    w = r.normal(0, 1, (rows, K)).astype(np.float32)
    u = r.random(w.shape)
    w[u < 0.004] = np.nan
    inf = (u >= 0.004) & (u < 0.008)
    w[inf] = r.choice(np.array([np.inf, -np.inf], np.float32), inf.sum())
    w[u > 0.6] = r.choice(np.array([0.0, -0.0], np.float32), (u > 0.6).sum())
    w[-1] = np.where(r.random(K) < 0.5, 0.0, -0.0)
    w[-2, 33] = np.nan  # in a lane's second element (groups of 64, 128)
    return w


def nan_aware_mismatches(a: mx.array, b: mx.array) -> int:
    """Elements that differ, counting two NaNs as equal whatever their payloads."""
    fa, fb = np.array(a.astype(mx.float32)), np.array(b.astype(mx.float32))
    both = np.isnan(fa) & np.isnan(fb)
    return int(((bits_of(a) != bits_of(b)) & ~both).sum())
