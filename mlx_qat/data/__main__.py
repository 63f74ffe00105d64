"""``python -m mlx_qat.data``: see :mod:`mlx_qat.data.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
