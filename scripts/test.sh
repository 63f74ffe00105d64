#!/usr/bin/env bash
# Set up (if needed), check the package's import layers, and run the default test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
.venv/bin/lint-imports --no-cache
exec .venv/bin/python -m mlx_qat.blas -m pytest -q "$@"
