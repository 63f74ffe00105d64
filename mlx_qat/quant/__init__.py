"""Quantization numerics: formats, fake quantization, learnable quantizers.

Modules:
    spec.py            QuantSpec: MLX's native formats
    affine.py, fp.py   the canonical grids (bit-identical to MLX's CPU `mx.quantize`)
    affine_cpu.py      the min/max grid and fixed codes, faster on MLX's CPU backend (same bits)
    fake_quant.py      min/max fake-quant with the STE; the forward's dispatch
    lsq.py, learned_affine.py   learnable quantizers (reference and fused paths)
    quantizers.py      the nn.Module quantizers the QAT layers hold
    codes.py           integer codes and transition distances (TRS statistics)
    backend.py         which path runs: fused kernels (mlx_qat.kernels), CPU path, reference
    kernel_check.py, kernel_cases.py   fused kernels vs the reference: the checks; their inputs
"""

from .fake_quant import Grid, dequantize_grid, fake_quantize, quantize_grid, reference_fake_quant
from .quantizers import (
    QUANTIZERS,
    LearnedAffineQuantizer,
    LSQQuantizer,
    MinMaxQuantizer,
    Quantizer,
    make_quantizer,
)
from .spec import QuantSpec

__all__ = [
    "Grid",
    "LSQQuantizer",
    "LearnedAffineQuantizer",
    "MinMaxQuantizer",
    "QUANTIZERS",
    "QuantSpec",
    "Quantizer",
    "dequantize_grid",
    "fake_quantize",
    "make_quantizer",
    "quantize_grid",
    "reference_fake_quant",
]
