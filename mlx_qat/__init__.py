"""mlx_qat: quantization-aware training for MLX.

Fake-quant layers that simulate MLX's native quantized formats exactly, compute-optimal
full-precision/QAT schedules, and export to models that `mlx_lm.load` reads unchanged.
"""

from .layers import QATEmbedding, QATLinear, QATSwitchLinear
from .prepare import init_quantizers, prepare, prepare_report, qat_layers, quantize, set_fake_quant
from .qat_config import QATConfig
from .quant import QuantSpec, fake_quantize, make_quantizer, quantize_grid

__version__ = "0.1.0"  # the one place: pyproject.toml reads it (tool.setuptools.dynamic)

__all__ = [
    "QATConfig",
    "QATEmbedding",
    "QATLinear",
    "QATSwitchLinear",
    "QuantSpec",
    "fake_quantize",
    "init_quantizers",
    "make_quantizer",
    "prepare",
    "prepare_report",
    "qat_layers",
    "quantize",
    "quantize_grid",
    "set_fake_quant",
]
