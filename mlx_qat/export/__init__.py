"""Export: training checkpoints (or mlx-lm models) → MLX model directories `mlx_lm.load` reads.

Modules: `source` (what is read), `pack` (QAT grid / PTQ / dequantize, the dtype cast),
`write` (mlx-lm layout, sharding, atomic directory), `parity` (train = deploy loss check),
`card` (README.md), `api` (`convert`), `cli` (`main`).
"""

from .api import ConvertResult, convert
from .errors import ConvertError, ParityError
from .parity import DEFAULT_TOLERANCE, ParityReport, val_loss

__all__ = [
    "DEFAULT_TOLERANCE",
    "ConvertError",
    "ConvertResult",
    "ParityError",
    "ParityReport",
    "convert",
    "main",
    "val_loss",
]


def main(argv: list[str] | None = None) -> int:
    """The `mlx_qat.convert` command (see `mlx_qat.export.cli`)."""
    from .cli import main as _main

    return _main(argv)
