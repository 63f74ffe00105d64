"""Microscaling float formats (mxfp4, nvfp4, mxfp8), bit-identical to MLX's `mx.quantize`.

These mirror MLX 0.32.4's op-level quantizer (the one its CPU backend runs), including the
dtype of every step. Per group g (32 elements; 16 for nvfp4), with the weight dtype T:

    mxfp4 / mxfp8 (e8m0 scale, one byte = exponent + 127):
        a = max|g| / T(6 or 448)                          in T
        e = rint(log2 a); e += 1 if 2^e < a (float32)     round the scale up: max stays in range
        e = 0 if a == 0
        x = g / 2^e                                       in T
    nvfp4 (e4m3 scale byte):
        a = to_e4m3(float32(max|g| / T(6)))
        x = float32(g / T(from_e4m3(a)))                  the element step runs in float32

    FP4 element (e2m1, 16 codes; 0..7 = +{0,.5,1,1.5,2,3,4,6}, 8..15 = the negatives):
        code = argmin_i |x − LUT[i]|, ties to the lower index (so to the smaller magnitude,
        and +0 over −0). Computed here as a count of strictly-closer neighbours, which equals
        the argmin because |x − l_i| (correctly rounded) is V-shaped in i.
    FP8 element: to_e4m3(x), saturating.

    Dequantize in T:  ŵ = T(element) · T(2^(byte − 127))   or   T(element) · T(from_e4m3(byte)).

Elements are packed LSB first (8 FP4 or 4 FP8 codes per uint32); scales are uint8.
"""

from __future__ import annotations

import mlx.core as mx

from .affine import group, pack_codes

FP4_LEVELS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
FP4_LUT = (*FP4_LEVELS, *(-v for v in FP4_LEVELS))


def _e8m0_exponent(a: mx.array) -> mx.array:
    """Rounded-up power-of-two exponent of `a` (dtype T), returned as T like MLX does."""
    exponent = mx.round(mx.log2(a)).astype(mx.int32)
    decoded = mx.power(mx.array(2.0, mx.float32), exponent.astype(mx.float32))
    exponent = mx.where(decoded < a.astype(mx.float32), exponent + 1, exponent)
    return mx.where(a == 0, mx.array(0, a.dtype), exponent)


def _fp4_codes(x: mx.array) -> mx.array:
    """FP4 e2m1 codes (uint32) of `x`, with MLX's argmin tie rule, distances in x.dtype."""
    m = mx.abs(x)
    levels = [mx.array(v, x.dtype) for v in FP4_LEVELS]
    dist = [mx.abs(m - lv) for lv in levels]
    k = sum((dist[i + 1] < dist[i]).astype(mx.uint32) for i in range(7))
    return mx.where((x < 0) & (k > 0), k + 8, k).astype(mx.uint32)


def fp_scaled_elements(w: mx.array, mode: str, group_size: int) -> tuple[mx.array, mx.array]:
    """(x, sbyte): the elements divided by their group's scale, before rounding (grouped,
    (..., G, group_size); float32 for nvfp4, else w's dtype), and the uint8 scales (..., G, 1)."""
    dt = w.dtype
    wg = group(w, group_size)
    a = mx.abs(wg).max(axis=-1, keepdims=True) / mx.array(448.0 if mode == "mxfp8" else 6.0, dt)
    if mode == "nvfp4":
        sbyte = mx.to_fp8(a.astype(mx.float32))
        return (wg / mx.from_fp8(sbyte, dt)).astype(mx.float32), sbyte
    e = _e8m0_exponent(a)
    x = wg / mx.power(mx.array(2.0, dt), e)
    return x, (e + mx.array(127, mx.int32)).astype(mx.uint8)


def fp_codes_and_scales(w: mx.array, mode: str, group_size: int) -> tuple[mx.array, mx.array]:
    """Element codes (uint32, shape of w) and uint8 scales (..., K/group_size)."""
    x, sbyte = fp_scaled_elements(w, mode, group_size)
    code = mx.to_fp8(x).astype(mx.uint32) if mode == "mxfp8" else _fp4_codes(x)
    return code.reshape(w.shape), sbyte.squeeze(-1)


def fp_dequantize_codes(code: mx.array, sbyte: mx.array, mode: str, dtype: mx.Dtype) -> mx.array:
    """ŵ from element codes (..., K) and scale bytes (..., G), in `dtype` (MLX's arithmetic)."""
    group_size = code.shape[-1] // sbyte.shape[-1]
    if mode == "mxfp8":
        elem = mx.from_fp8(code.astype(mx.uint8), dtype)
    else:
        elem = mx.array(FP4_LUT, dtype)[code]
    if mode == "nvfp4":
        scale = mx.from_fp8(sbyte, dtype)
    else:
        scale = mx.power(mx.array(2.0, dtype), sbyte.astype(dtype) - mx.array(127, dtype))
    return (group(elem, group_size) * scale[..., None]).reshape(code.shape)


def fake_quant_fp(w: mx.array, mode: str, group_size: int) -> mx.array:
    """Quantize-dequantize `w` in an fp mode (no gradient rule: see `fake_quantize`)."""
    code, sbyte = fp_codes_and_scales(w, mode, group_size)
    return fp_dequantize_codes(code, sbyte, mode, w.dtype)


def grid_fp(w: mx.array, mode: str, bits: int, group_size: int) -> tuple[mx.array, mx.array]:
    """(packed codes, uint8 scales) exactly as CPU `mx.quantize(w, group_size, bits, mode)`."""
    code, sbyte = fp_codes_and_scales(w, mode, group_size)
    return pack_codes(code, bits), sbyte
