"""Learned affine quantizer: MLX's own asymmetric per-group grid with learnable scale and bias.

Per group (float32), with n = 2^bits − 1 and learnable s, b (initialised from the min/max grid
of `affine.py`, as DWQ and EfficientQAT do; s may be negative, as in MLX's own grids):

    x = (w − b) / s        code = clip(rint(x), 0, n)        ŵ = T(code)·T(s) + T(b)

Gradients (straight-through on the rounding, clipped outside the grid), cot = ∂L/∂ŵ:

    ∂L/∂w = cot·[0 ≤ x ≤ n]
    ∂L/∂s = Σ_group cot·(code − x) inside,  cot·code outside
    ∂L/∂b = Σ_group cot·[x < 0 or x > n]

With `scale_grad="fixed_codes"` the codes are read on an **anchor grid** (s₀, b₀) — the
min/max grid at initialisation, kept frozen — and the learned (s, b) only map them to values:

    x = (w − b₀) / s₀      code = clip(rint(x), 0, n)      ŵ = T(code)·T(s) + T(b)

    ∂L/∂w = cot·(s/s₀)·[0 ≤ x ≤ n]      ∂L/∂s = Σ_group cot·code      ∂L/∂b = Σ_group cot

Moving the grid then never flips a code, so the grid's gradient is exact: it is `mlx_lm`'s
DWQ gradient, and with the weights frozen this quantizer *is* DWQ (tests/test_distill.py). In
the plain mode the codes are re-derived from (s, b) and DWQ's gradient would ignore the codes a
grid update flips (5% of SmolLM2's codes in 49 steps at weight LR 1e-5:
benchmarks/results/pretrained_smollm2_fixed_v1.md), so it is not offered there. This mode has
no fused kernel: pure MLX on every backend, on MLX's CPU backend with float32 weights and
scales `affine_cpu.anchored_*` (the same bits, staged so that `mx.compile` cannot fuse it
into slow scalar loops).

Export is exact by construction: the codes, T(s) and T(b) are the grid (with scales stored in
another dtype S the forward computes T(S(code)·S(s) + S(b)), as MLX will). Paths:
`reference_*` (pure MLX) and `fused_*` (one kernel pass each, fed the clamped scale and the bias
per group); `learned_affine_function` picks one through backend.py.
"""

from __future__ import annotations

from functools import cache

import mlx.core as mx

from ..kernels import gpu, sources
from . import affine_cpu, backend
from .affine import dequantize_codes, group, minmax_params

SCALE_MIN = 1e-7
SCALE_GRADS = ("ste", "fixed_codes")  # the grid's gradient: straight-through, or DWQ's


def init_params(w: mx.array, bits: int, group_size: int) -> tuple[mx.array, mx.array]:
    """(scale, bias), each (..., G) float32: MLX's min/max grid of `w`."""
    s, b = minmax_params(group(w, group_size).astype(mx.float32), bits)
    return s.squeeze(-1), b.squeeze(-1)


def clamp_scale(scale: mx.array) -> mx.array:
    """float32 scale with |s| ≥ SCALE_MIN, sign kept (a scale can cross zero during training):
    the scale every path (reference, kernels) uses."""
    s = scale.astype(mx.float32)
    return mx.where(mx.abs(s) < SCALE_MIN, mx.where(s < 0, -SCALE_MIN, SCALE_MIN), s)


def codes(wg: mx.array, scale: mx.array, bias: mx.array, bits: int):
    """(code, s, b, x) for grouped float32 weights; s and b shaped (..., G, 1)."""
    s = clamp_scale(scale)[..., None]
    b = bias.astype(mx.float32)[..., None]
    x = (wg - b) / s
    return mx.clip(mx.round(x), 0.0, float(2**bits - 1)), s, b, x


def _after(cot: mx.array, *arrays: mx.array) -> list[mx.array]:
    """`arrays`, made to depend on the cotangent, so that `mx.compile` cannot merge the
    backward's recomputation of the codes with the forward's and keep every layer's codes
    (twice the weights' size in float32) alive in between. Same values."""
    return mx.depends(list(arrays), [cot])


def reference_forward(w, scale, bias, bits: int, group_size: int, scale_dtype=None) -> mx.array:
    """Pure-MLX ŵ of `w` (..., K) for scale and bias shaped (..., K/group_size)."""
    code, s, b, _ = codes(group(w, group_size).astype(mx.float32), scale, bias, bits)
    # With scales stored as scale_dtype, MLX dequantizes in that dtype: do the same.
    dt = w.dtype if scale_dtype is None else scale_dtype
    return dequantize_codes(code, s, b, dt).astype(w.dtype).reshape(w.shape)


def reference_backward(w, scale, bias, cot, bits: int, group_size: int):
    """Pure-MLX (∂L/∂w, ∂L/∂scale, ∂L/∂bias) for the cotangent `cot` = ∂L/∂ŵ."""
    w, scale, bias = _after(cot, w, scale, bias)
    code, _, _, x = codes(group(w, group_size).astype(mx.float32), scale, bias, bits)
    c = group(cot, group_size).astype(mx.float32)
    inside = (x >= 0) & (x <= float(2**bits - 1))
    dw = mx.where(inside, c, 0.0).astype(cot.dtype).reshape(w.shape)
    ds = (c * mx.where(inside, code - x, code)).sum(axis=-1)
    db = mx.where(inside, 0.0, c).sum(axis=-1)
    return dw, ds.astype(scale.dtype), db.astype(bias.dtype)


def anchored_forward(w, scale, bias, anchor_scale, anchor_bias, bits, group_size, scale_dtype=None):
    """Pure-MLX ŵ with the codes read on the anchor grid (s₀, b₀) and valued by (s, b)."""
    code, _, _, _ = codes(group(w, group_size).astype(mx.float32), anchor_scale, anchor_bias, bits)
    s, b = clamp_scale(scale)[..., None], bias.astype(mx.float32)[..., None]
    dt = w.dtype if scale_dtype is None else scale_dtype
    return dequantize_codes(code, s, b, dt).astype(w.dtype).reshape(w.shape)


def anchored_backward(w, scale, bias, anchor_scale, anchor_bias, cot, bits, group_size):
    """Pure-MLX (∂L/∂w, ∂L/∂scale, ∂L/∂bias) of `anchored_forward` (the anchors get none)."""
    w, anchor_scale, anchor_bias = _after(cot, w, anchor_scale, anchor_bias)
    code, s0, _, x = codes(group(w, group_size).astype(mx.float32), anchor_scale, anchor_bias, bits)
    c = group(cot, group_size).astype(mx.float32)
    inside = (x >= 0) & (x <= float(2**bits - 1))
    ratio = clamp_scale(scale)[..., None] / s0
    dw = mx.where(inside, c * ratio, 0.0).astype(cot.dtype).reshape(w.shape)
    return dw, (c * code).sum(axis=-1).astype(scale.dtype), c.sum(axis=-1).astype(bias.dtype)


def _cpu_anchored(w: mx.array, scale_dtype) -> bool:
    """Whether the fixed-code mode takes affine_cpu's path (else the reference above)."""
    f32 = w.dtype == mx.float32 and (scale_dtype is None or scale_dtype == mx.float32)
    return f32 and backend.active_backend() == "cpu"


def cpu_anchored_forward(w, scale, bias, anchor_scale, anchor_bias, bits, group_size):
    """`anchored_forward` of float32 `w` through affine_cpu (the same bits)."""
    per_group = [clamp_scale(anchor_scale), anchor_bias, clamp_scale(scale), bias]
    s0, b0, s, b = (p.astype(mx.float32).reshape(-1) for p in per_group)
    x = w.reshape(-1, group_size)
    return affine_cpu.anchored_forward(x, s0, b0, s, b, bits).reshape(w.shape)


def cpu_anchored_backward(w, scale, bias, anchor_scale, anchor_bias, cot, bits, group_size):
    """`anchored_backward` of float32 `w` through affine_cpu (the same bits)."""
    w, anchor_scale, anchor_bias = _after(cot, w, anchor_scale, anchor_bias)
    s0 = clamp_scale(anchor_scale).reshape(-1)
    ratio = clamp_scale(scale).reshape(-1) / s0
    x, c = w.reshape(-1, group_size), cot.reshape(-1, group_size).astype(mx.float32)
    b0 = anchor_bias.astype(mx.float32).reshape(-1)
    dw, ds, db = affine_cpu.anchored_backward(x, c, s0, b0, ratio, bits)
    return (
        dw.astype(cot.dtype).reshape(w.shape),
        ds.reshape(scale.shape).astype(scale.dtype),
        db.reshape(bias.shape).astype(bias.dtype),
    )


def _kernel_params(w, scale, bias, group_size: int) -> tuple[mx.array, mx.array]:
    s = backend.per_group(clamp_scale(scale), w, group_size)
    return s, backend.per_group(bias, w, group_size)


def fused_forward(w, scale, bias, bits: int, group_size: int, scale_dtype=None, on=None):
    """`reference_forward` from one fused kernel pass on GPU backend `on` (default: active)."""
    on = backend.require_fused(on)
    s, b = _kernel_params(w, scale, bias, group_size)
    kind = sources.KIND_LEARNED
    return gpu.forward(on, w, kind, bits, group_size, p0=s, p1=b, dequant_dtype=scale_dtype)


def fused_backward(w, scale, bias, cot, bits: int, group_size: int, on=None):
    """`reference_backward` from one fused pass over (w, cot) on GPU backend `on`: ∂L/∂w
    exact, the per-group sums up to float32 summation order."""
    on = backend.require_fused(on)
    s, b = _kernel_params(w, scale, bias, group_size)
    dw, red = gpu.backward(on, w, cot, sources.KIND_LEARNED, bits, group_size, s, b)
    ds = red[:, 0].reshape(scale.shape).astype(scale.dtype)
    db = red[:, 1].reshape(bias.shape).astype(bias.dtype)
    return dw, ds, db


@cache
def learned_affine_function(bits: int, group_size: int, scale_dtype=None):
    """custom_function (w, scale, bias) -> ŵ with the gradients above (fused or reference)."""
    paths = (fused_forward, reference_forward, fused_backward, reference_backward)
    return backend.dispatched_function(paths, bits, group_size, scale_dtype)


@cache
def anchored_function(bits: int, group_size: int, scale_dtype=None):
    """custom_function (w, scale, bias, anchor_scale, anchor_bias) -> ŵ, the fixed-code mode."""

    @mx.custom_function
    def fq(w, scale, bias, anchor_scale, anchor_bias):
        if _cpu_anchored(w, scale_dtype):
            return cpu_anchored_forward(w, scale, bias, anchor_scale, anchor_bias, bits, group_size)
        return anchored_forward(
            w, scale, bias, anchor_scale, anchor_bias, bits, group_size, scale_dtype
        )

    @fq.vjp
    def fq_vjp(primals, cot, output):
        w, scale, bias, s0, b0 = primals
        backward = cpu_anchored_backward if _cpu_anchored(w, scale_dtype) else anchored_backward
        dw, ds, db = backward(w, scale, bias, s0, b0, cot, bits, group_size)
        return dw, ds, db, mx.zeros_like(s0), mx.zeros_like(b0)

    return fq
