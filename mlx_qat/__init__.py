"""mlx_qat: quantization-aware training for MLX.

Fake-quant layers that simulate MLX's native quantized formats exactly, compute-optimal
full-precision/QAT schedules, and export to models that `mlx_lm.load` reads unchanged.
"""

from .quant import QuantSpec, fake_quantize, make_quantizer, quantize_grid

__version__ = "0.1.0"

__all__ = ["QuantSpec", "fake_quantize", "make_quantizer", "quantize_grid"]
