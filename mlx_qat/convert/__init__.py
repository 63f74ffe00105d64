"""Convert: training checkpoints (or mlx-lm models) → MLX model directories `mlx_lm.load` reads.

    >>> from mlx_qat.convert import convert
    >>> result = convert("runs/main", "mlx_model")      # latest checkpoint, trained grid
    >>> result.parity["rel_diff"]                         # train = deploy, checked

Modules: `source` (what is read), `method` (which of QAT / PTQ / dequantize, applied; the
losses before export), `pack` (QAT grid / PTQ / dequantize, the dtype cast),
`write` (mlx-lm layout, sharding, atomic directory, config.json last), `output` (where an
export may go, what `--force` may replace, stale temporaries), `tokenizer` (data files only,
the run's own by hash), `parity` (train = deploy loss check), `card` (README.md), `api`
(`convert`); `gguf*` import a GGUF file. The command is `mlx_qat.cli.convert`.
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
    "val_loss",
]
