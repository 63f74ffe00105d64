"""Learned affine quantizer: MLX's own asymmetric per-group grid with learnable scale and bias.

Per group (float32), with n = 2^bits − 1 and learnable s, b (initialised from the min/max grid
of `affine.py`, as DWQ and EfficientQAT do; s may be negative, as in MLX's own grids):

    x = (w − b) / s        code = clip(rint(x), 0, n)        ŵ = T(code)·T(s) + T(b)

Gradients (straight-through on the rounding, clipped outside the grid), cot = ∂L/∂ŵ:

    ∂L/∂w = cot·[0 ≤ x ≤ n]
    ∂L/∂s = Σ_group cot·(code − x) inside,  cot·code outside
    ∂L/∂b = Σ_group cot·[x < 0 or x > n]

Export is exact by construction: the codes, T(s) and T(b) are the grid (scale/bias may be
stored in another dtype S: the forward then computes T(S(code)·S(s) + S(b)) as MLX will).
"""

from __future__ import annotations

from functools import cache

import mlx.core as mx

from .. import kernels  # fused Metal/CUDA forward/backward, used only when a GPU runs
from .affine import dequantize_codes, group, minmax_params

SCALE_MIN = 1e-7


def init_params(w: mx.array, bits: int, group_size: int) -> tuple[mx.array, mx.array]:
    """(scale, bias), each (..., G) float32: MLX's min/max grid of `w`."""
    s, b = minmax_params(group(w, group_size).astype(mx.float32), bits)
    return s.squeeze(-1), b.squeeze(-1)


def _safe(scale: mx.array) -> mx.array:
    # Keep |s| away from 0 (a scale can cross zero during training) without changing its sign.
    s = scale.astype(mx.float32)
    return mx.where(mx.abs(s) < SCALE_MIN, mx.where(s < 0, -SCALE_MIN, SCALE_MIN), s)[..., None]


def codes(wg: mx.array, scale: mx.array, bias: mx.array, bits: int):
    """(code, s, b, x) for grouped float32 weights; s and b shaped (..., G, 1)."""
    s = _safe(scale)
    b = bias.astype(mx.float32)[..., None]
    x = (wg - b) / s
    return mx.clip(mx.round(x), 0.0, float(2**bits - 1)), s, b, x


@cache
def learned_affine_function(bits: int, group_size: int, scale_dtype=None):
    """custom_function (w, scale, bias) -> ŵ with the gradients above."""
    n = float(2**bits - 1)

    @mx.custom_function
    def fq(w, scale, bias):
        if kernels.fused_backend():  # mlx_qat.kernels: same bits, one fused pass
            return kernels.learned_affine_forward(w, scale, bias, bits, group_size, scale_dtype)
        code, s, b, _ = codes(group(w, group_size).astype(mx.float32), scale, bias, bits)
        # With scales stored as scale_dtype, MLX dequantizes in that dtype: do the same.
        dt = w.dtype if scale_dtype is None else scale_dtype
        return dequantize_codes(code, s, b, dt).astype(w.dtype).reshape(w.shape)

    @fq.vjp
    def fq_vjp(primals, cot, output):
        w, scale, bias = primals
        if kernels.fused_backend():  # mlx_qat.kernels: fused dw and per-group ds, db sums
            return kernels.learned_affine_backward(w, scale, bias, cot, bits, group_size)
        code, _, _, x = codes(group(w, group_size).astype(mx.float32), scale, bias, bits)
        c = group(cot, group_size).astype(mx.float32)
        inside = (x >= 0) & (x <= n)
        dw = mx.where(inside, c, 0.0).astype(cot.dtype).reshape(w.shape)
        ds = (c * mx.where(inside, code - x, code)).sum(axis=-1)
        db = mx.where(inside, 0.0, c).sum(axis=-1)
        return dw, ds.astype(scale.dtype), db.astype(bias.dtype)

    return fq
