"""`mlx_qat.convert`: a QAT training run → an MLX model directory that `mlx_lm.load` reads.

Python:

    >>> from mlx_qat.convert import convert
    >>> result = convert("runs/main", "mlx_model")      # latest checkpoint, trained grid
    >>> result.parity["rel_diff"]                         # train = deploy, checked

Command line (flags mirror `mlx_lm.convert` where they overlap):

    mlx_qat.convert runs/main --mlx-path mlx_model [--dtype float16] [--ptq] [--dequantize]
    python -m mlx_qat.convert ...

The implementation lives in `mlx_qat.export`.
"""

from __future__ import annotations

from .export import ConvertError, ConvertResult, ParityError, convert
from .export import main as _main

__all__ = ["ConvertError", "ConvertResult", "ParityError", "convert", "main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mlx_qat.convert` console script (`mlx_qat.cli:convert_main`)."""
    return _main(argv)


if __name__ == "__main__":
    import sys

    from .blas import reexec_with_openblas

    # Re-exec as a module (sys.argv[0] is this file's path, which breaks relative imports).
    reexec_with_openblas(["-m", "mlx_qat.convert", *sys.argv[1:]])
    raise SystemExit(main())
