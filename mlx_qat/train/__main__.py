"""`python -m mlx_qat.train ...` (same as the `mlx_qat.train` console script)."""

import sys

from ..blas import reexec_with_openblas
from ..cli import train_main

reexec_with_openblas(["-m", "mlx_qat.train", *sys.argv[1:]])
raise SystemExit(train_main(sys.argv[1:]))
