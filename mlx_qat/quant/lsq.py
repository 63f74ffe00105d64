"""Symmetric learnable-step quantizers (ParetoQ): LSQ (3–8 bit), SEQ (2 bit), sign (1 bit).

Notation: w grouped as (..., G, gs) in float32; α ≥ 1e-5 the learnable step, one per output row
(broadcast over the row's groups) or one per group; x = w / α; cot = ∂L/∂ŵ; g the gradient
scale 1/sqrt(numel(W)·Qp) with the integer Qp = 2^(b−1) − 1 (Qp = 1 for 1 and 2 bits).

LSQ, b ∈ {3, 4, 5, 6, 8}, Qn = −2^(b−1), Qp = 2^(b−1) − 1:
    q = clip(rint(x), Qn, Qp)            ŵ = q·α
    ∂ŵ/∂w = [Qn ≤ x ≤ Qp]                ∂L/∂α = g·Σ cot·(q − x if inside else q)
    MLX affine grid: code = q − Qn ∈ [0, 2^b − 1], scale = α, bias = Qn·α.

SEQ, b = 2 (Stretched Elastic Quant, c = 0.99, n = 2):
    r = rint(clip(x, −c, c)·2 − ½) ∈ {−2, −1, 0, 1}    ŵ = α·(r + ½)/2 ∈ α·{±¼, ±¾}
    ∂ŵ/∂w = [|x| ≤ c]                    ∂L/∂α = g·Σ cot·((r + ½)/2 − x inside; ∓¾ at the clip)
    MLX affine grid: code = r + 2, scale = α/2, bias = −¾α.

sign, b = 1 (research only: no MLX export):
    ŵ = α·sign(w)      ∂ŵ/∂w = [|x| ≤ 1]     ∂L/∂α = g·Σ cot·sign(w)

ŵ is always computed in the weight dtype T from the affine form T(code)·T(scale) + T(bias), so
the exported grid reproduces the trained weights bit for bit; with scales stored in dtype S
(`scale_dtype`), T(S(code)·S(scale) + S(bias)) as MLX does. Rounding is rint (ties to even).
Initial α per row/group: LSQ max|w|/Qp, SEQ max|w|, sign mean|w|.

Paths: `reference_*` (pure MLX) and `fused_*` (one kernel pass each, fed the clamped α per
group; the per-row sum and g applied here); `lsq_function` picks one through backend.py.
"""

from __future__ import annotations

import math
from functools import cache

import mlx.core as mx

from ..kernels import gpu, sources
from . import backend
from .affine import dequantize_codes, group

ALPHA_MIN = 1e-5
SEQ_CLIP = 0.99
LSQ_BITS = (3, 4, 5, 6, 8)


def qrange(bits: int) -> tuple[int, int]:
    """(Qn, Qp) of the LSQ integer grid."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def grad_scale(numel: int, bits: int) -> float:
    """ParetoQ's g = 1 / sqrt(numel · Qp), with Qp = 1 for 1 and 2 bits."""
    qp = max(2 ** (bits - 1) - 1, 1)
    return 1.0 / math.sqrt(numel * qp)


def init_alpha(wg: mx.array, bits: int, per_group: bool) -> mx.array:
    """Initial step from the weights, shape (..., G) per group or (..., 1) per row."""
    a = mx.abs(wg.astype(mx.float32))
    axes = (-1,) if per_group else (-2, -1)
    if bits == 1:
        alpha = a.mean(axis=axes)
    elif bits == 2:
        alpha = a.max(axis=axes)
    else:
        alpha = a.max(axis=axes) / qrange(bits)[1]
    alpha = mx.maximum(alpha, ALPHA_MIN)
    return alpha if per_group else alpha[..., None]


def clamp_alpha(alpha: mx.array) -> mx.array:
    """α as float32, clamped to ≥ ALPHA_MIN: the step every path (reference, kernels) uses."""
    return mx.maximum(alpha.astype(mx.float32), ALPHA_MIN)


def _x(wg: mx.array, alpha: mx.array) -> tuple[mx.array, mx.array]:
    """(x, α) with α broadcast to (..., G or 1, 1) and clamped."""
    a = clamp_alpha(alpha)[..., None]
    return wg / a, a


def codes(wg: mx.array, alpha: mx.array, bits: int):
    """(code, scale, bias, x, q) of grouped float32 weights; scale/bias broadcastable."""
    x, a = _x(wg, alpha)
    if bits == 1:
        q = mx.sign(x)
        return None, a, None, x, q
    if bits == 2:
        r = mx.round(mx.clip(x, -SEQ_CLIP, SEQ_CLIP) * 2.0 - 0.5)
        return r + 2.0, a * 0.5, a * -0.75, x, (r + 0.5) * 0.5
    qn, qp = qrange(bits)
    q = mx.clip(mx.round(x), qn, qp)
    return q - qn, a, a * qn, x, q


def dequantize(wg, alpha, bits, dtype, scale_dtype=None):
    """ŵ (grouped) in `dtype` through the affine form (or α·sign for 1 bit)."""
    code, scale, bias, _, q = codes(wg, alpha, bits)
    if bits == 1:
        return (q * scale).astype(dtype)
    if scale_dtype is None:
        return dequantize_codes(code, scale, bias, dtype)
    # Deployed with scales in scale_dtype, MLX dequantizes in that dtype: do the same.
    return dequantize_codes(code, scale, bias, scale_dtype).astype(dtype)


def reference_forward(w, alpha, bits: int, group_size: int, scale_dtype=None) -> mx.array:
    """Pure-MLX ŵ of `w` (..., K) for α shaped (..., 1) per row or (..., K/group_size)."""
    wg = group(w, group_size).astype(mx.float32)
    return dequantize(wg, alpha, bits, w.dtype, scale_dtype).reshape(w.shape)


def reference_backward(w, alpha, cot, bits: int, group_size: int) -> tuple[mx.array, mx.array]:
    """Pure-MLX (∂L/∂w, ∂L/∂α) for the cotangent `cot` = ∂L/∂ŵ (the rules in the header)."""
    wg = group(w, group_size).astype(mx.float32)
    _, _, _, x, q = codes(wg, alpha, bits)
    c = group(cot, group_size).astype(mx.float32)
    if bits == 1:
        inside = mx.abs(x) <= 1.0
        da = c * q
    elif bits == 2:
        inside = mx.abs(x) <= SEQ_CLIP
        da = c * mx.where(inside, q - x, mx.sign(x) * 0.75)
    else:
        qn, qp = qrange(bits)
        inside = (x >= qn) & (x <= qp)
        da = c * mx.where(inside, q - x, q)
    dw = mx.where(inside, c, 0.0).astype(cot.dtype).reshape(w.shape)
    axes = (-1,) if alpha.shape[-1] == wg.shape[-2] else (-2, -1)
    da = da.sum(axis=axes) * grad_scale(w.size, bits)
    return dw, da.reshape(alpha.shape).astype(alpha.dtype)


def kernel_kind(bits: int) -> int:
    """The fused kernels' KIND for this bit width: sign (1), SEQ (2) or LSQ."""
    return {1: sources.KIND_SIGN, 2: sources.KIND_SEQ}.get(bits, sources.KIND_LSQ)


def fused_forward(w, alpha, bits: int, group_size: int, scale_dtype=None, on=None) -> mx.array:
    """`reference_forward` from one fused kernel pass on GPU backend `on` (default: active)."""
    on = backend.require_fused(on)
    a = backend.per_group(clamp_alpha(alpha), w, group_size)
    return gpu.forward(on, w, kernel_kind(bits), bits, group_size, p0=a, dequant_dtype=scale_dtype)


def fused_backward(w, alpha, cot, bits: int, group_size: int, on=None):
    """`reference_backward` from one fused pass over (w, cot) on GPU backend `on`: ∂L/∂w
    exact, ∂L/∂α up to float32 summation order (per-group kernel sums, the row's sum here)."""
    on = backend.require_fused(on)
    a = backend.per_group(clamp_alpha(alpha), w, group_size)
    dw, red = gpu.backward(on, w, cot, kernel_kind(bits), bits, group_size, p0=a)
    groups = (*w.shape[:-1], w.shape[-1] // group_size)
    da = red[:, 0].reshape(groups)
    if alpha.shape[-1] != groups[-1]:
        da = da.sum(axis=-1, keepdims=True)
    da = da * grad_scale(w.size, bits)
    return dw, da.reshape(alpha.shape).astype(alpha.dtype)


@cache
def lsq_function(bits: int, group_size: int, scale_dtype=None):
    """custom_function (w, α) -> ŵ with ParetoQ's gradients (fused or reference path)."""
    paths = (fused_forward, reference_forward, fused_backward, reference_backward)
    return backend.dispatched_function(paths, bits, group_size, scale_dtype)
