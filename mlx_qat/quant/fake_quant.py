"""`fake_quantize`: the min/max quantizer with a straight-through gradient, and its grid.

Forward: ŵ = dequantize(quantize(w)) on the canonical grid (`affine.py`, `fp.py`), bit-identical
to `mx.dequantize(*mx.quantize(w, ...), ..., dtype=w.dtype)` on MLX's CPU backend for every
mode, bit width, group size and float dtype, on the path backend.py picks (fused kernel on a
GPU, affine_cpu.py on CPU, else `reference_fake_quant`; same bits).

Backward (straight-through estimator): ∂L/∂w = ∂L/∂ŵ, exactly. The min/max quantizer never
clips (the group's extremes define the range), so there is nothing to mask. Without this
custom VJP MLX would differentiate the ops above and send gradient only through the group
min/max (the scale and bias), which is silently wrong for QAT.

`quantize_grid` returns what export packs (packed uint32 codes, scales, biases, MLX's layout);
`mx.dequantize` of it equals `fake_quantize` bit for bit.
"""

from __future__ import annotations

from functools import cache
from typing import NamedTuple

import mlx.core as mx

from ..kernels import FP_KINDS, gpu, sources
from . import affine_cpu, backend
from .affine import fake_quant_minmax, grid_minmax
from .fp import fake_quant_fp, grid_fp
from .spec import QuantSpec


class Grid(NamedTuple):
    """A quantized tensor in MLX's layout: what `mx.quantize` returns and export writes.

    Affine scales/biases have the weight's dtype (or the quantizer's scale_dtype); fp scales
    are uint8 and `biases` is None.
    """

    wq: mx.array
    scales: mx.array
    biases: mx.array | None


def reference_fake_quant(w: mx.array, spec: QuantSpec) -> mx.array:
    """Pure-MLX quantize-dequantize of `w` (no gradient rule). The canonical forward."""
    if spec.is_affine:
        return fake_quant_minmax(w, spec.bits, spec.group_size)
    return fake_quant_fp(w, spec.mode, spec.group_size)


def fused_fake_quant(
    w: mx.array, spec: QuantSpec, dequant_dtype: mx.Dtype | None = None, on: str | None = None
) -> mx.array:
    """`reference_fake_quant` from the fused kernel on GPU backend `on` (default: the active
    one). Affine specs may dequantize in `dequant_dtype` (see `affine.fake_quant_minmax`)."""
    on = backend.require_fused(on)
    if spec.is_affine:
        kind, bits, gs = sources.KIND_MINMAX, spec.bits, spec.group_size
        return gpu.forward(on, w, kind, bits, gs, dequant_dtype=dequant_dtype)
    return gpu.fp_forward(on, w, FP_KINDS[spec.mode], spec.group_size)


def fake_quant_forward(w: mx.array, spec: QuantSpec) -> mx.array:
    """Forward of the min/max fake quantizer on the active path (backend.py); no gradient
    rule, always bit-identical to `reference_fake_quant`."""
    path = backend.active_backend()
    if path in backend.FUSED:
        return fused_fake_quant(w, spec, on=path)
    if path == "cpu" and spec.is_affine:
        return affine_cpu.fake_quant_minmax(w, spec.bits, spec.group_size)
    return reference_fake_quant(w, spec)


@cache
def _ste(spec: QuantSpec):
    """One custom_function per spec: MLX passes only arrays through the VJP cleanly."""
    return backend.straight_through(lambda w: fake_quant_forward(w, spec))


def _validate(w: mx.array, spec: QuantSpec, name: str = "weight") -> None:
    if not mx.issubdtype(w.dtype, mx.floating):
        raise TypeError(f"{name}: fake quantization needs a float array, got {w.dtype}")
    spec.check_shape(tuple(w.shape), name)


def fake_quantize(w: mx.array, spec: QuantSpec) -> mx.array:
    """Quantize-dequantize `w` to `spec`'s grid with a straight-through gradient.

    `w` is a float array, at least 2-D, its last dimension a multiple of `spec.group_size`;
    ŵ has w's shape and dtype (bit-identical to MLX's CPU quantize-dequantize: module header).

    Example:
        >>> w = mx.random.normal((64, 128))
        >>> w_hat = fake_quantize(w, QuantSpec("affine", bits=4, group_size=64))
    """
    _validate(w, spec)
    return _ste(spec)(w)


def quantize_grid(w: mx.array, spec: QuantSpec) -> Grid:
    """The grid `fake_quantize(w, spec)` used: packed codes, scales and biases (MLX layout)."""
    _validate(w, spec)
    if spec.is_affine:
        return Grid(*grid_minmax(w, spec.bits, spec.group_size))
    wq, scales = grid_fp(w, spec.mode, spec.bits, spec.group_size)
    return Grid(wq, scales, None)


def dequantize_grid(grid: Grid, spec: QuantSpec, dtype: mx.Dtype | None = None) -> mx.array:
    """`mx.dequantize` of a grid (convenience for tests and export checks)."""
    dtype = dtype or (grid.scales.dtype if spec.is_affine else mx.float32)
    return mx.dequantize(
        grid.wq,
        grid.scales,
        grid.biases,
        group_size=spec.group_size,
        bits=spec.bits,
        mode=spec.mode,
        dtype=dtype,
    )
