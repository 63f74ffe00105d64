"""Affine (scale + bias per group) quantization, bit-identical to MLX's CPU `mx.quantize`.

Per group g of `group_size` consecutive elements along the last axis, with n = 2^bits − 1 and
every intermediate in float32 (the weight is cast to float32 first):

    w_max, w_min = max(g), min(g)
    s    = max((w_max − w_min) / n, 1e-7)          # 1e-7 keeps constant groups finite
    side = |w_min| > |w_max|                       # the extreme of larger magnitude...
    s    = s if side else −s                       # ...gets code 0 (so s < 0 about half the time)
    edge = w_min if side else w_max
    q0   = rint(edge / s)                          # rint: round half to even
    if q0 ≠ 0:  s = edge / q0,  b = edge           # moves the grid so that 0 is (nearly) on it
    else:       b = 0
    code = clip(rint((w − b) / s), 0, n)           # a true division: w · (1/s) is not bit-exact

Dequantization is done in the weight dtype T, as MLX's CPU fallback does, with two roundings
for 16-bit T:  ŵ = T(code) · T(s) + T(b).

Codes are packed least-significant-bit first into a uint32 bit stream (`pack_codes`), which is
MLX's layout for every bit width (3, 5 and 6 bits straddle word boundaries).

Learnable quantizers (LSQ/SEQ, learned affine) produce their own (code, s, b) and reuse
`dequantize_codes` and `pack_codes`, which is what makes their export exact.
"""

from __future__ import annotations

import mlx.core as mx


def group(w: mx.array, group_size: int) -> mx.array:
    """Reshape (..., K) to (..., K/group_size, group_size)."""
    return w.reshape(*w.shape[:-1], w.shape[-1] // group_size, group_size)


def minmax_params(wg: mx.array, bits: int) -> tuple[mx.array, mx.array]:
    """MLX's per-group scale and bias (float32, shape (..., G, 1)) for grouped float32 `wg`."""
    return params_from_extremes(
        wg.max(axis=-1, keepdims=True), wg.min(axis=-1, keepdims=True), bits
    )


def params_from_extremes(w_max: mx.array, w_min: mx.array, bits: int) -> tuple[mx.array, mx.array]:
    """(scale, bias) from each group's float32 max and min (the grid rules in the header)."""
    n = float(2**bits - 1)
    side = mx.abs(w_min) > mx.abs(w_max)
    s = mx.maximum((w_max - w_min) / n, 1e-7)
    s = mx.where(side, s, -s)
    edge = mx.where(side, w_min, w_max)
    q0 = mx.round(edge / s)
    nonzero = q0 != 0
    return mx.where(nonzero, edge / q0, s), mx.where(nonzero, edge, 0.0)


def codes_from_params(wg: mx.array, s: mx.array, b: mx.array, bits: int) -> mx.array:
    """Integer codes (as float32) of grouped float32 `wg` on the grid (s, b)."""
    return mx.clip(mx.round((wg - b) / s), 0.0, float(2**bits - 1))


def dequantize_codes(code: mx.array, s: mx.array, b: mx.array, dtype: mx.Dtype) -> mx.array:
    """ŵ = T(code)·T(s) + T(b), in `dtype` (MLX's CPU dequantize arithmetic)."""
    return code.astype(dtype) * s.astype(dtype) + b.astype(dtype)


def pack_codes(code: mx.array, bits: int) -> mx.array:
    """Pack integer codes (..., K) into uint32 (..., K·bits/32), LSB first, as MLX stores them.

    K·bits must be a multiple of 32 (always true for group sizes 32/64/128).
    """
    *lead, k = code.shape
    c = code.astype(mx.uint32)
    if 32 % bits == 0:
        per = 32 // bits
        c = c.reshape(*lead, k // per, per)
        shifts = mx.arange(0, 32, bits, dtype=mx.uint32)
        return (c << shifts).sum(axis=-1).astype(mx.uint32)
    # 3, 5, 6 bits: 32 codes make `bits` words; expand to single bits and regroup.
    c = c.reshape(*lead, k // 32, 32, 1)
    bit = (c >> mx.arange(bits, dtype=mx.uint32)) & 1  # (..., k/32, 32, bits)
    bit = bit.reshape(*lead, k // 32, bits, 32)  # the stream cut into words of 32 bits
    word = (bit << mx.arange(32, dtype=mx.uint32)).sum(axis=-1).astype(mx.uint32)
    return word.reshape(*lead, k * bits // 32)


def unpack_codes(packed: mx.array, bits: int) -> mx.array:
    """Inverse of `pack_codes`: uint32 (..., K·bits/32) to uint32 codes (..., K)."""
    *lead, words = packed.shape
    if 32 % bits == 0:
        per = 32 // bits
        shifts = mx.arange(0, 32, bits, dtype=mx.uint32)
        c = (packed[..., None] >> shifts) & ((1 << bits) - 1)
        return c.reshape(*lead, words * per)
    bit = (packed.reshape(*lead, words // bits, bits, 1) >> mx.arange(32, dtype=mx.uint32)) & 1
    bit = bit.reshape(*lead, words // bits, 32, bits)
    c = (bit << mx.arange(bits, dtype=mx.uint32)).sum(axis=-1).astype(mx.uint32)
    return c.reshape(*lead, words * 32 // bits)


def fake_quant_minmax(
    w: mx.array, bits: int, group_size: int, dequant_dtype: mx.Dtype | None = None
) -> mx.array:
    """Quantize-dequantize `w` with the min/max grid (no gradient rule: see `fake_quantize`).

    `dequant_dtype` D: dequantize as MLX does with scales stored in D, ŵ = T(D(code)·D(s) +
    D(b)) (default: w's dtype T).
    """
    wg = group(w, group_size).astype(mx.float32)
    s, b = minmax_params(wg, bits)
    code = codes_from_params(wg, s, b, bits)
    out = dequantize_codes(code, s, b, dequant_dtype or w.dtype)
    return out.astype(w.dtype).reshape(w.shape)


def grid_minmax(w: mx.array, bits: int, group_size: int):
    """(packed codes, scales, biases) exactly as CPU `mx.quantize(w, group_size, bits)`."""
    wg = group(w, group_size).astype(mx.float32)
    s, b = minmax_params(wg, bits)
    code = codes_from_params(wg, s, b, bits).reshape(w.shape)
    return pack_codes(code, bits), s.squeeze(-1).astype(w.dtype), b.squeeze(-1).astype(w.dtype)
