#!/bin/bash
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
for s in 4096 8192; do
timeout 150 python3 benchmarks/bench_fake_quant.py --size $s --repeats 21 --out $OUT/fake_quant_cuda_$s 2>&1 | tail -40
done
timeout 200 python3 benchmarks/bench_train_step.py --sizes d2 d6 d12 --batch 16 --seq 512 --ref-repeats 15 2>&1 | tail -20
cp benchmarks/results/train_step.md $OUT/train_step_cuda.md; cp benchmarks/results/train_step.json $OUT/train_step_cuda.json
