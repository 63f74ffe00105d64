"""Convert: training checkpoints (or mlx-lm models) → MLX model directories `mlx_lm.load` reads.

    >>> from mlx_qat.convert import convert
    >>> result = convert("runs/main", "mlx_model")      # latest checkpoint, trained grid
    >>> result.parity["rel_diff"]                         # train = deploy, checked

Modules: `api` (`convert`: what is read, which of QAT / PTQ / dequantize, the losses before
export), `pack` (QAT grid / PTQ / dequantize, the dtype cast), `write` (where an export may go,
what `--force` may replace, mlx-lm layout, atomic directory, config.json last), `tokenizer`
(data files only, the run's own by hash), `parity` (train = deploy loss check), `errors` (and
the refusal of non-finite values), `card` (README.md); `gguf`, `gguf_read`, `gguf_llama` import a GGUF file. The command is `mlx_qat.cli.convert`.
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
