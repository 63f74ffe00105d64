"""`python -m mlx_qat <verb> ...` with verbs data, train, convert, eval, plan."""

from .cli import main

raise SystemExit(main())
