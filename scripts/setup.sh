#!/usr/bin/env bash
# Idempotent set-up: a venv in .venv with mlx_qat (editable) and its test extras (track: wandb,
# for tests/test_report.py), plus Debian's
# OpenBLAS on Linux (MLX's CPU wheel ships the reference BLAS, ~20x slower for matmuls).
# Sourced by scripts/main.sh and scripts/test.sh; safe to run again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.mlx_qat-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev,fit,track]"
  touch "$stamp"
fi
if [ "$(uname -s)" = Linux ] && ! ldconfig -p 2>/dev/null | grep -q 'libopenblas.so.0 '; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas0-pthread) >/dev/null \
      || echo "setup: could not install libopenblas0-pthread; matmuls will use MLX's slow reference BLAS" >&2
  else
    echo "setup: install Debian's libopenblas0-pthread for ~20x faster CPU matmuls" >&2
  fi
fi
