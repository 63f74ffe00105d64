"""Quantization numerics: formats, fake quantization, learnable quantizers."""

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
