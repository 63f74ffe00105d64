"""One fused kernel launch against the pure-MLX reference, as rows of a check table.

The rows both kernel checks (`kernel_check`) build: each output of each kernel, launched
through the same glue the quantizers use, compared with the reference computed on MLX's CPU.
What must hold (a row's `tolerance`):
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
from .kernel_cases import (
    fp_families,
    learned_case,
    lsq_case,
    minmax_families,
    nan_aware_mismatches,
    stacked,
)
from .spec import QuantSpec

REDUCTION_RTOL = 1e-5
DTYPES = (mx.float32, mx.float16, mx.bfloat16)


@dataclass(frozen=True)
class CheckRow:
    """One output of one kernel launch compared with the reference.

    Attributes:
        kernel: job and quantizer, e.g. "forward minmax", "fp_forward nvfp4", "backward lsq",
            "cpu minmax" (the CPU fast path).
        output: "ŵ", "∂w", "∂α", "∂scale" or "∂bias".
        case: the inputs, e.g. "bits=4 g64 bfloat16".
        elements: elements compared.
        differ: elements whose bits differ (exact outputs) or beyond the tolerance.
        max_abs_diff: largest |got − ref| (float32; NaN pairs count as equal).
        tolerance: 0 for bit-exact outputs, else the relative tolerance (× max|ref|).
        error: the exception a failed compile/launch raised ("" when it ran).
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
        """One line naming the kernel and the size of the disagreement."""
        head = f"{self.kernel} {self.output} ({self.case})"
        if self.error:
            return f"{head}: {self.error}"
        bound = "differ" if self.tolerance == 0 else f"beyond {self.tolerance:g}·max|ref|"
        return (
            f"{head}: {self.differ} of {self.elements} elements {bound} "
            f"(max abs diff {self.max_abs_diff:.3g})"
        )


def _on(name: str):
    """Stream for the fused launch: the GPU for a real backend (the C++ stand-ins run here)."""
    return mx.stream(mx.gpu) if name in backend.FUSED else contextlib.nullcontext()


def _ref(fn, *args):
    with mx.stream(mx.cpu):  # the canonical grid is MLX's CPU arithmetic
        out = fn(*args)
        mx.eval(out)
    return out


def _f32(a: mx.array) -> np.ndarray:
    return np.array(a.astype(mx.float32))


def _max_diff(got: mx.array, ref: mx.array) -> float:
    d = np.abs(_f32(got) - _f32(ref))
    d = d[~np.isnan(d)]  # NaN pairs (and inf − inf) count as equal here
    return float(d.max()) if d.size else 0.0


def exact_row(kernel: str, output: str, case: str, got: mx.array, ref: mx.array) -> CheckRow:
    """Row for an output that must match bit for bit (NaN payloads not compared)."""
    if got.shape != ref.shape or got.dtype != ref.dtype:
        why = f"got {got.shape}/{got.dtype}, expected {ref.shape}/{ref.dtype}"
        return CheckRow(kernel, output, case, ref.size, ref.size, float("inf"), error=why)
    bad = nan_aware_mismatches(got, ref)
    return CheckRow(kernel, output, case, ref.size, bad, _max_diff(got, ref) if bad else 0.0)


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
        with _on(on):
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


def _cot(w: mx.array) -> mx.array:
    return mx.random.normal(w.shape, key=mx.random.key(w.size)).astype(w.dtype)


def lsq_rows(on: str, w, alpha, bits: int, gs: int, scale_dtype=None, case="") -> list:
    """LSQ/SEQ/sign forward (ŵ) and backward (∂w, ∂α) through lsq.py's fused glue."""
    rows, cot = [], _cot(w)
    got, err = _launch(
        on, "forward lsq", ("ŵ",), case, lsq.fused_forward, w, alpha, bits, gs, scale_dtype, on
    )
    ref = _ref(lsq.reference_forward, w, alpha, bits, gs, scale_dtype)
    rows += err or [exact_row("forward lsq", "ŵ", case, got, ref)]
    got, err = _launch(
        on, "backward lsq", ("∂w", "∂α"), case, lsq.fused_backward, w, alpha, cot, bits, gs, on
    )
    if err:
        return rows + err
    dw, da = _ref(lsq.reference_backward, w, alpha, cot, bits, gs)
    rows.append(exact_row("backward lsq", "∂w", case, got[0], dw))
    rows.append(close_row("backward lsq", "∂α", case, got[1], da))
    return rows


def learned_rows(on: str, w, scale, bias, bits: int, gs: int, scale_dtype=None, case="") -> list:
    """Learned-affine forward (ŵ) and backward (∂w, ∂scale, ∂bias) through its fused glue."""
    rows, cot, la = [], _cot(w), learned_affine
    args = (w, scale, bias, bits, gs)
    fwd = "forward learned_affine"
    got, err = _launch(on, fwd, ("ŵ",), case, la.fused_forward, *args, scale_dtype, on)
    ref = _ref(la.reference_forward, *args, scale_dtype)
    rows += err or [exact_row(fwd, "ŵ", case, got, ref)]
    outputs = ("∂w", "∂scale", "∂bias")
    bwd, args = "backward learned_affine", (w, scale, bias, cot, bits, gs)
    got, err = _launch(on, bwd, outputs, case, la.fused_backward, *args, on)
    if err:
        return rows + err
    want = _ref(la.reference_backward, *args)
    rows.append(exact_row(bwd, "∂w", case, got[0], want[0]))
    for name, g, r in zip(outputs[1:], got[1:], want[1:]):
        rows.append(close_row(bwd, name, case, g, r))
    return rows


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
    """Rows for every fused kernel output `quantizer` launches at (`bits`, `gs`, `dtype`), on
    backend `on`, for the awkward inputs of kernel_cases.py: what both checks compare.

    Args:
        quantizer: "minmax" (the affine or fp forward of `mode`), "lsq" (LSQ/SEQ/sign: bits 1
            to 8) or "learned_affine".
        dequant_dtype: the dtype ŵ is dequantized in when it is not `dtype` (scale_dtype).
        per: LSQ's α granularity, "row" or "group".
        rows: rows per input family; None for kernel_cases.py's defaults (the user's check);
            the self-check passes fewer.
        case: the rows' case label.
    """
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
        return lsq_rows(on, w.astype(dtype), alpha, bits, gs, dequant_dtype, case)
    w, scale, bias = learned_case(bits, gs, seed=bits, **size)
    return learned_rows(on, w.astype(dtype), scale, bias, bits, gs, dequant_dtype, case)


def dtype_name(dtype: mx.Dtype) -> str:
    return str(dtype).split(".")[-1]
