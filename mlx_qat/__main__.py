"""`python -m mlx_qat <verb> ...`: see `mlx_qat.cli`."""

from .cli import main

raise SystemExit(main())
