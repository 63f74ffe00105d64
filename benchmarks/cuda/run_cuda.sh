#!/bin/bash
# What produced benchmarks/results/cuda/: run on the lent NVIDIA machine after a first call that
# copied the first half of the mlx-cuda-13 payload and the mlx/mlx-lm wheels to /root/keep (the
# device takes at most 64 MiB per call; the mlx-cuda-13 wheel is 90 MB, split as an xz tarball).
set -u
export PYTHONUNBUFFERED=1
K=/root/keep; SITE=/tmp/site
if [ ! -d $SITE/mlx/lib ]; then
  mkdir -p $SITE
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $SITE $K/mlx-0.32.4-*.whl $K/mlx_lm-*.whl || exit 3
  cat $K/p.aa .dev2/p.ab | xz -d | tar xf - -C $SITE || exit 4
  ln -sfn $(python3 -c "import site; print(site.getsitepackages()[0])")/nvidia $SITE/nvidia
fi
export PYTHONPATH=$SITE:$PWD
export LD_LIBRARY_PATH=$(ls -d $SITE/nvidia/*/lib | tr '\n' ':')${LD_LIBRARY_PATH:-}
python3 -c "import mlx.core as mx; print('mlx', mx.__version__, mx.default_device(), 'cuda', mx.cuda.is_available())" || exit 5
# The parity run `pytest -m cuda tests/test_kernels.py` makes, with its whole table kept.
timeout 330 python3 - <<'PY' > $OUT/kernel_check.txt 2>&1; echo "kernel check exit $?"; tail -3 $OUT/kernel_check.txt
from mlx_qat.quant import kernel_check as k
r = k.check_backend("cuda")
print(k.format_report(r))
raise SystemExit(r.exit_code)
PY
python3 - <<'PY' 2>&1 | tail -5
from mlx_qat.quant import backend, kernel_check
print("self_check", kernel_check.self_check(), "active", backend.active_backend())
PY
timeout 120 python3 benchmarks/bench_fake_quant.py --size 8192 --repeats 21 --out $OUT/fake_quant_cuda_8192 2>&1 | tail -30
timeout 90 python3 benchmarks/bench_fake_quant.py --size 8192 --repeats 21 --extra-bits "" --fp-modes mxfp4,nvfp4,mxfp8 --out $OUT/fake_quant_cuda_8192_fp 2>&1 | tail -30
timeout 240 python3 benchmarks/bench_train_step.py --sizes d2 d6 d12 --batch 16 --seq 512 --ref-repeats 15 2>&1 | tail -9
cp benchmarks/results/train_step.md $OUT/train_step_cuda.md; cp benchmarks/results/train_step.json $OUT/train_step_cuda.json
