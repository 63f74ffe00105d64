"""Fake-quant kernels: fused Metal/CUDA kernels on GPUs, the fastest pure-MLX path on CPU.

Which path runs (`active_backend()`):
    "metal"      default device is the GPU and `mx.metal.is_available()`   fused kernels
    "cuda"       default device is the GPU and `mx.cuda.is_available()`    fused kernels
    "cpu"        otherwise (MLX on CPU)                                     kernels/cpu.py
    "reference"  kernels disabled (`MLX_QAT_KERNELS=0` in the environment, or
                 `set_kernels_enabled(False)`)                              pure-MLX reference
Every path produces the project's canonical grid (MLX's CPU `mx.quantize`, quant/affine.py)
bit for bit; the CPU path is tested against the reference, the kernel bodies through their
C++ build (kernels/cpp.py), the GPU launches only on a Mac/NVIDIA machine (`testing.gpu_parity`).
Because no CI machine has a GPU, `self_check()` compares the fused min/max kernel with the
reference on awkward inputs the first time a QAT model is prepared on a GPU; a kernel that
fails to compile or disagrees turns the kernels off (with a warning) instead of training on a
wrong grid.

Kernels (bodies in sources.py and fp_sources.py; layouts in sources.py's docstring): min/max
affine forward, mxfp4/mxfp8/nvfp4 forward, LSQ/SEQ/sign and learned-affine forward and backward.
The forwards run the lanes of a SIMD group per quantization group (coalesced), the backward one
thread per group.
The kernels compute only forwards and gradient reductions; gradient rules (STE, LSQ, ...) stay
in the quantizers' `mx.custom_function`s, which call the functions below.
"""

from __future__ import annotations

import logging
import os

import mlx.core as mx

from . import cpu, gpu, sources
from .fp_sources import FP_KINDS

logger = logging.getLogger(__name__)
_OFF = ("0", "false", "off", "no")
_checked: dict[str, bool] = {}
_enabled = os.environ.get("MLX_QAT_KERNELS", "1").strip().lower() not in _OFF


def set_kernels_enabled(enabled: bool) -> None:
    """Turn the fused kernels and the CPU fast path on or off (off: pure-MLX reference)."""
    global _enabled
    _enabled = bool(enabled)


def kernels_enabled() -> bool:
    """Whether the kernels / CPU fast path may be used (see `set_kernels_enabled`)."""
    return _enabled


def fused_backend() -> str | None:
    """ "metal" or "cuda" when a fused kernel would run now, else None."""
    if not _enabled or mx.default_device() != mx.gpu:
        return None
    if gpu.metal_available() and "metal" in gpu.KERNELS:
        return "metal"
    if gpu.cuda_available() and "cuda" in gpu.KERNELS:
        return "cuda"
    return None


def active_backend() -> str:
    """The path `fake_quant_forward` takes now: "metal", "cuda", "cpu" or "reference"."""
    fused = fused_backend()
    if fused:
        return fused
    if _enabled and mx.default_device() == mx.cpu:
        return "cpu"
    return "reference"


def self_check() -> bool:
    """Check the fused kernels once per backend; turn them off if they fail. Outside compile.

    Runs the fused min/max forward on a small awkward input (all-negative and constant groups,
    exact ties, outliers; float32 and bfloat16) and compares it bit for bit with the pure-MLX
    reference. Returns True when no fused backend is active or the check passes. On a failure
    (compile error, launch error, mismatch) logs a warning naming the cause and the opt-out,
    and calls `set_kernels_enabled(False)`, so training continues on the exact pure-MLX path.
    """
    backend = fused_backend()
    if backend is None:
        return True
    if backend in _checked:
        return _checked[backend]
    from ..quant.affine import fake_quant_minmax

    try:
        base = mx.random.normal((4, 128), key=mx.random.key(0))
        w = mx.concatenate([base, -mx.abs(base), mx.full((1, 128), 0.37), mx.round(base * 4) / 2])
        bad = 0
        for dtype in (mx.float32, mx.bfloat16):
            x = w.astype(dtype)
            got = gpu.forward(backend, x, sources.KIND_MINMAX, 4, 64)
            with mx.stream(mx.cpu):
                ref = fake_quant_minmax(x, 4, 64)
            bad += int(mx.sum(got.astype(mx.float32) != ref.astype(mx.float32)).item())
        ok, why = bad == 0, f"{bad} elements differ from the reference grid"
    except Exception as e:  # noqa: BLE001 - any kernel failure must fall back, not crash
        ok, why = False, f"{type(e).__name__}: {e}"
    _checked[backend] = ok
    if not ok:
        logger.warning(
            "mlx_qat: the fused %s fake-quant kernel failed its self-check (%s); using the "
            "pure-MLX path instead (same numerics, slower). Please report this; set "
            "MLX_QAT_KERNELS=0 to skip the kernels and this check.",
            backend,
            why,
        )
        set_kernels_enabled(False)
    return ok


def fake_quant_forward(w: mx.array, spec) -> mx.array:
    """Forward of the min/max fake quantizer for `spec` on the best available backend.

    On a GPU every mode has a fused kernel; on CPU affine specs take the fast path and the
    fp modes the reference. The result is bit-identical to `reference_fake_quant`.
    """
    from ..quant.fake_quant import reference_fake_quant

    path = active_backend()
    if path in ("metal", "cuda"):
        if spec.is_affine:
            return gpu.forward(path, w, sources.KIND_MINMAX, spec.bits, spec.group_size)
        return gpu.fp_forward(path, w, FP_KINDS[spec.mode], spec.group_size)
    if path == "cpu" and spec.is_affine:
        return cpu.fake_quant_minmax(w, spec.bits, spec.group_size)
    return reference_fake_quant(w, spec)


def minmax_forward(w: mx.array, bits: int, group_size: int, dequant_dtype=None) -> mx.array:
    """Fused min/max fake-quant whose dequantisation runs in `dequant_dtype` (a GPU backend
    must be active: see `fused_backend`). ŵ = T(D(code)·D(s) + D(b)), D = dequant_dtype."""
    return gpu.forward(
        _need_fused(), w, sources.KIND_MINMAX, bits, group_size, dequant_dtype=dequant_dtype
    )


def _need_fused() -> str:
    b = fused_backend()
    if b is None:
        raise RuntimeError(
            "mlx_qat.kernels: no fused backend is active (needs the GPU as default device with "
            "Metal or CUDA, and kernels enabled); call the pure-MLX quantizer instead"
        )
    return b


def _lsq_kind(bits: int) -> int:
    return {1: sources.KIND_SIGN, 2: sources.KIND_SEQ}.get(bits, sources.KIND_LSQ)


def _lsq_alpha(w: mx.array, alpha: mx.array, group_size: int) -> mx.array:
    """Clamped float32 α, one per group (per-row α broadcast over the row's groups)."""
    from ..quant.lsq import ALPHA_MIN

    a = mx.maximum(alpha.astype(mx.float32), ALPHA_MIN)
    groups = (*w.shape[:-1], w.shape[-1] // group_size)
    return mx.broadcast_to(a, groups).reshape(-1)


def lsq_forward(w, alpha, bits: int, group_size: int, dequant_dtype=None) -> mx.array:
    """Fused LSQ (bits 3–8) / SEQ (2) / sign (1) forward of quant/lsq.py on the active GPU.

    Args:
        w: weight (..., K). alpha: α, shape (..., 1) per row or (..., K/group_size) per group.
        dequant_dtype: the scale dtype S of `lsq_function(..., scale_dtype)` (None: w.dtype).
    """
    a = _lsq_alpha(w, alpha, group_size)
    return gpu.forward(
        _need_fused(), w, _lsq_kind(bits), bits, group_size, p0=a, dequant_dtype=dequant_dtype
    )


def lsq_backward(w, alpha, cot, bits: int, group_size: int) -> tuple[mx.array, mx.array]:
    """(∂L/∂w, ∂L/∂α) of quant/lsq.py's LSQ/SEQ/sign, from one fused pass over (w, cot).

    ∂L/∂α is summed per group in the kernel (float32, sequential order), then over the row's
    groups for per-row α, and scaled by ParetoQ's g; it matches the pure-MLX vjp up to
    float32 summation order, ∂L/∂w exactly.
    """
    from ..quant.lsq import grad_scale

    a = _lsq_alpha(w, alpha, group_size)
    dw, red = gpu.backward(_need_fused(), w, cot, _lsq_kind(bits), bits, group_size, p0=a)
    groups = (*w.shape[:-1], w.shape[-1] // group_size)
    da = red[:, 0].reshape(groups)
    if alpha.shape[-1] != groups[-1]:
        da = da.sum(axis=-1, keepdims=True)
    da = da * grad_scale(w.size, bits)
    return dw, da.reshape(alpha.shape).astype(alpha.dtype)


def _learned_params(scale, bias):
    from ..quant.learned_affine import SCALE_MIN

    s = scale.astype(mx.float32)
    s = mx.where(mx.abs(s) < SCALE_MIN, mx.where(s < 0, -SCALE_MIN, SCALE_MIN), s)
    return s.reshape(-1), bias.astype(mx.float32).reshape(-1)


def learned_affine_forward(w, scale, bias, bits: int, group_size: int, dequant_dtype=None):
    """Fused forward of quant/learned_affine.py (scale/bias shaped (..., K/group_size))."""
    s, b = _learned_params(scale, bias)
    return gpu.forward(
        _need_fused(),
        w,
        sources.KIND_LEARNED,
        bits,
        group_size,
        p0=s,
        p1=b,
        dequant_dtype=dequant_dtype,
    )


def learned_affine_backward(w, scale, bias, cot, bits: int, group_size: int):
    """(∂L/∂w, ∂L/∂scale, ∂L/∂bias) of quant/learned_affine.py from one fused pass.

    The per-group sums are float32 in sequential order: equal to the pure-MLX vjp up to
    summation order; ∂L/∂w exactly.
    """
    s, b = _learned_params(scale, bias)
    dw, red = gpu.backward(_need_fused(), w, cot, sources.KIND_LEARNED, bits, group_size, s, b)
    ds = red[:, 0].reshape(scale.shape).astype(scale.dtype)
    db = red[:, 1].reshape(bias.shape).astype(bias.dtype)
    return dw, ds, db


__all__ = [
    "active_backend",
    "fake_quant_forward",
    "fused_backend",
    "kernels_enabled",
    "learned_affine_backward",
    "learned_affine_forward",
    "lsq_backward",
    "lsq_forward",
    "minmax_forward",
    "self_check",
    "set_kernels_enabled",
]
