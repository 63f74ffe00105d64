"""What kernel_check.py runs: each `CheckRow` compares one kernel output, launched through the
quantizers' own glue, with the reference computed on MLX's CPU, on awkward inputs:
deterministic (rows, 384) float32 families (384: a multiple of 32, 64 and 128) hitting the
edges of MLX's grid (all-negative groups, where MLX's GPU quantizer would differ; constant
groups and zeros, for the 1e-7 scale floor and q0 = 0; exact .5 ties of (w − b)/s; outliers,
tiny and mixed magnitudes; NaN/inf; the fp formats' ties). What must hold (a row's `tolerance`):
    ŵ, ∂L/∂w           bit for bit (NaN payloads not compared: they depend on reduction order)
    ∂L/∂α, ∂L/∂scale,  max|got − ref| ≤ REDUCTION_RTOL · max|ref| over the tensor. The kernel
    ∂L/∂bias           sums each group sequentially in float32, the reference in MLX's order; two
                       float32 sums of n ≤ 384 terms differ by ~√n·2⁻²⁴ ≈ 1e-6 of the sum's
                       scale (at most 2n·2⁻²⁴ of Σ|terms|). Measured on the C++ build: 0 for
                       per-group sums, ≤ 1.4e-6 for per-row α (6 groups summed). A miscompiled
                       kernel (a wrong rint, a dropped clip) is off by whole terms: ≳ 1e-2.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from . import affine_cpu, backend, learned_affine, lsq
from .affine import fake_quant_minmax
from .fake_quant import fused_fake_quant, reference_fake_quant
from .spec import QuantSpec

REDUCTION_RTOL = 1e-5


@dataclass(frozen=True)
class CheckRow:
    """One output of one kernel launch compared with the reference.

    `kernel` is the job and quantizer ("forward minmax", "backward lsq", "cpu minmax", ...),
    `output` one of "ŵ", "∂w", "∂α", "∂scale", "∂bias"; `differ` counts the elements whose
    bits differ (or that are beyond `tolerance`·max|ref|; 0: bit-exact); `error` is the
    exception a failed compile/launch raised.
    """

    kernel: str
    output: str
    case: str
    elements: int
    differ: int = 0
    max_abs_diff: float = 0.0
    tolerance: float = 0.0
    error: str = ""

    @property
    def passed(self) -> bool:
        return not self.error and self.differ == 0

    def describe(self) -> str:
        head = f"{self.kernel} {self.output} ({self.case})"
        if self.error:
            return f"{head}: {self.error}"
        bound = "differ" if self.tolerance == 0 else f"beyond {self.tolerance:g}·max|ref|"
        return (
            f"{head}: {self.differ} of {self.elements} elements {bound} "
            f"(max abs diff {self.max_abs_diff:.3g})"
        )


# --- awkward inputs (also used by the C++-build tests) -----------------------------------------

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
    s, b = (np.array(a) for a in learned_affine.init_params(w, bits, gs))
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


# --- one kernel launch as rows ----------------------------------------------------------------


def _ref(fn, *args):
    with mx.stream(mx.cpu):  # the canonical grid is MLX's CPU arithmetic
        out = fn(*args)
        mx.eval(out)
    return out


def _f32(a: mx.array) -> np.ndarray:
    return np.array(a.astype(mx.float32))


def exact_row(kernel: str, output: str, case: str, got: mx.array, ref: mx.array) -> CheckRow:
    """Row for an output that must match bit for bit (NaN payloads not compared)."""
    if got.shape != ref.shape or got.dtype != ref.dtype:
        why = f"got {got.shape}/{got.dtype}, expected {ref.shape}/{ref.dtype}"
        return CheckRow(kernel, output, case, ref.size, ref.size, float("inf"), error=why)
    bad = nan_aware_mismatches(got, ref)
    if not bad:
        return CheckRow(kernel, output, case, ref.size, 0, 0.0)
    d = np.abs(_f32(got) - _f32(ref))
    d = d[~np.isnan(d)]  # NaN pairs (and inf − inf) count as equal here
    return CheckRow(kernel, output, case, ref.size, bad, float(d.max()) if d.size else 0.0)


def close_row(kernel: str, output: str, case: str, got: mx.array, ref: mx.array) -> CheckRow:
    """Row for a per-group reduction: |got − ref| ≤ REDUCTION_RTOL·max|ref| elementwise."""
    g, r = _f32(got).reshape(-1), _f32(ref).reshape(-1)
    if g.shape != r.shape:
        why = f"got {got.shape}, expected {ref.shape}"
        return CheckRow(kernel, output, case, r.size, r.size, float("inf"), REDUCTION_RTOL, why)
    d = np.abs(g - r)
    tol = REDUCTION_RTOL * (float(np.abs(r).max()) if r.size else 0.0)
    bad = int((~(d <= tol)).sum())  # NaN counts as beyond
    return CheckRow(kernel, output, case, r.size, bad, float(d.max()), REDUCTION_RTOL)


def _launch(on: str, kernel: str, outputs: tuple[str, ...], case: str, fn, *args):
    """(result, None) from the fused call, or (None, error rows) when it raised."""
    try:
        # the GPU for a real backend (the C++ stand-ins run on the default stream)
        with mx.stream(mx.gpu) if on in backend.FUSED else contextlib.nullcontext():
            out = fn(*args)
            mx.eval(out)
        return out, None
    except Exception as e:  # noqa: BLE001 - a compile/launch failure is a result here
        why = f"{type(e).__name__}: {e}".strip()[:300]
        return None, [CheckRow(kernel, o, case, 0, error=why) for o in outputs]


def minmax_rows(on: str, w: mx.array, spec: QuantSpec, dequant_dtype=None, case="") -> list:
    """The min/max (affine) or fp forward of `spec` on `w`: one row."""
    kernel = "forward minmax" if spec.is_affine else f"fp_forward {spec.mode}"
    got, err = _launch(on, kernel, ("ŵ",), case, fused_fake_quant, w, spec, dequant_dtype, on)
    if err:
        return err
    if spec.is_affine:
        ref = _ref(fake_quant_minmax, w, spec.bits, spec.group_size, dequant_dtype)
    else:
        ref = _ref(reference_fake_quant, w, spec)
    return [exact_row(kernel, "ŵ", case, got, ref)]


def _learnable_rows(on, name, module, w, params, grads, bits, gs, scale_dtype, case) -> list:
    """ŵ and ∂w bit for bit, `grads` within tolerance: `module`'s fused glue vs its reference."""
    cot = mx.random.normal(w.shape, key=mx.random.key(w.size)).astype(w.dtype)
    fwd, bwd = f"forward {name}", f"backward {name}"
    fargs = (w, *params, bits, gs, scale_dtype)
    got, err = _launch(on, fwd, ("ŵ",), case, module.fused_forward, *fargs, on)
    ref = _ref(module.reference_forward, *fargs)
    rows = err or [exact_row(fwd, "ŵ", case, got, ref)]
    bargs = (w, *params, cot, bits, gs)
    got, err = _launch(on, bwd, ("∂w", *grads), case, module.fused_backward, *bargs, on)
    if err:
        return rows + err
    want = _ref(module.reference_backward, *bargs)
    rows.append(exact_row(bwd, "∂w", case, got[0], want[0]))
    return rows + [close_row(bwd, n, case, g, r) for n, g, r in zip(grads, got[1:], want[1:])]


def cpu_rows(w: mx.array, bits: int, gs: int, case: str) -> list:
    """The CPU fast path (one and two streams) against the reference: two rows."""
    ref = _ref(fake_quant_minmax, w, bits, gs)
    rows = []
    for split in (False, True):
        with mx.stream(mx.cpu):
            got = affine_cpu.fake_quant_minmax(w, bits, gs, split=split)
        streams = "2 streams" if split else "1 stream"
        rows.append(exact_row("cpu minmax", "ŵ", f"{case} {streams}", got, ref))
    return rows


def kernel_rows(
    on: str,
    quantizer: str,
    bits: int,
    gs: int,
    dtype: mx.Dtype,
    *,
    mode: str = "affine",
    dequant_dtype: mx.Dtype | None = None,
    per: str = "row",
    rows: int | None = None,
    case: str = "",
) -> list[CheckRow]:
    """Rows for every fused kernel output `quantizer` ("minmax": the affine or fp forward of
    `mode`, "lsq", "learned_affine") launches at (`bits`, `gs`, `dtype`) on backend `on`, for
    the awkward inputs (`rows` per family; None: their defaults)."""
    size = {} if rows is None else {"rows": rows}
    if quantizer == "minmax":
        spec = QuantSpec(mode, bits, gs)
        if spec.is_affine:
            families = minmax_families(bits, gs, seed=bits * gs, **size)
        else:  # the fp modes: the min/max families' shapes plus the fp formats' edges
            families = {**minmax_families(4, 32, seed=11, **size), **fp_families(seed=12, **size)}
        return minmax_rows(on, stacked(families, dtype), spec, dequant_dtype, case)
    if quantizer == "lsq":
        w, alpha = lsq_case(bits, gs, per, seed=bits, **size)
        args = (w.astype(dtype), (alpha,), ("∂α",))
        return _learnable_rows(on, "lsq", lsq, *args, bits, gs, dequant_dtype, case)
    w, scale, bias = learned_case(bits, gs, seed=bits, **size)
    args = (w.astype(dtype), (scale, bias), ("∂scale", "∂bias"))
    return _learnable_rows(
        on, "learned_affine", learned_affine, *args, bits, gs, dequant_dtype, case
    )
