"""Benchmark: where the memory of a QAT fine-tune goes, against mlx-lm's DWQ on the same model
and batch.

    python benchmarks/bench_memory.py --work /tmp/bp    # bench_pretrained.py's work dir

(`WORK/float` the teacher, the data `WORK/all/data` — bench_pretrained's layout — or `WORK/data`,
its layout before per-width folders.)

Each case is one process (MLX's peak is per process) that builds what its training holds, runs
two optimizer steps on batches of `--batch-size` x `--seq-len` tokens, and reports:

- the arrays it holds between steps, by component: the student's weights (and quantizer
  parameters), the optimizer's state, the teacher's weights — summed `nbytes`;
- the peak: MLX's peak memory over the two steps (`mx.get_peak_memory`), so the peak minus
  the held arrays is the step's transient (gradients, activations kept for the backward pass,
  the logits of student and teacher and the loss's intermediates).

Cases: `dwq` (mlx_lm.quant.dwq.dwq_quantize, the student's quantized layers through
dequantize, as bench_pretrained runs it), and `mlx_qat.train` fine-tunes (`Trainer`, QAT from
the first step, learned affine grid, fixed-code gradient): `kd` and `ce` training everything,
`grid` (`--train grid`: weights frozen, the DWQ parameter set). The KD loss is
`train/kd.py`'s: logits formed a chunk of tokens at a time from the hidden states and the
output matrix. `NAME@logits` forms both models' full logits and applies the closed-form
gradient in chunks (`kd.kd_per_token`); `NAME@autodiff` also differentiates the KL by MLX's
autodiff through `eval_modes.kl_to_teacher` (the step before `train/kd.py`).

(Re-executes itself with OpenBLAS preloaded, see `mlx_qat.blas`.)
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import header_lines, machine  # noqa: E402
from mlx_qat.blas import reexec_with_openblas  # noqa: E402


def data_dir(work: Path) -> Path:
    """bench_pretrained's training data in `work`: `all/data` (its layout), else `data`."""
    return work / "data" if (work / "data").is_dir() else work / "all" / "data"


RESULTS = ROOT / "benchmarks" / "results"
GB = 1e9


def nbytes(tree) -> int:
    from mlx.utils import tree_flatten

    return sum(v.nbytes for _, v in tree_flatten(tree) if hasattr(v, "nbytes"))


class Stop(Exception):
    pass


def case_qat(args, case: str) -> dict:
    import mlx.core as mx

    from mlx_qat.train.config import TrainConfig
    from mlx_qat.train.trainer import Trainer

    kind, _, variant = case.partition("@")
    if variant == "autodiff":  # the step's KD before train/kd.py
        from mlx_qat.eval_modes import kl_to_teacher
        from mlx_qat.train import distill

        def autodiff(logits, teacher_logits, temperature):
            return temperature**2 * kl_to_teacher(logits, teacher_logits, temperature)

        distill.kd_per_token = autodiff
    if variant in ("autodiff", "logits"):  # both models' full logits (no head chunks)
        from mlx_qat.train import distill

        distill.split_head = lambda model: False
    steps = 2
    cfg = TrainConfig(
        out=str(args.work / f"mem_{case}"), overwrite=True, model=str(args.work / "float"),
        data=[str(data_dir(args.work))], qat_fraction=1.0, bits=args.bits, group_size=64,
        embed_bits=args.bits, quantizer="learned_affine", scale_grad="fixed_codes",
        objective="ce" if kind == "ce" else "kd", kd_temperature=2.0,
        train="grid" if kind == "grid" else "all", lr=1e-4, quantizer_lr_scale=1.0,
        weight_decay=0.0, tokens=steps * args.batch_size * args.seq_len,
        batch_size=args.batch_size, seq_len=args.seq_len, eval_every=0, eval_batches=1,
        final_eval_batches=1, save_every=0, quiet=True,
    )  # fmt: skip
    t = Trainer(cfg)
    t.setup()
    held = {}

    def on_step(tr, step):
        if step == 1:  # the teacher exists from the switch on
            held["teacher"] = nbytes(tr.teacher.parameters()) if tr.teacher else 0
        if step == steps:
            raise Stop

    t.on_step = on_step
    held["weights"] = nbytes(t.model.parameters())
    held["optimizer"] = nbytes(t.optimizer.state)
    mx.reset_peak_memory()
    try:
        t.run()
    except Stop:
        pass
    held["optimizer"] = nbytes(t.optimizer.state)  # after the first update: moments exist
    return {"held": held, "peak": mx.get_peak_memory()}


def case_dwq(args) -> dict:
    import copy

    import mlx.core as mx
    import mlx.optimizers as optim
    import numpy as np
    from mlx_lm.quant.dwq import dwq_quantize
    from mlx_lm.utils import load, quantize_model

    from benchmarks.bench_pretrained import _dequantized_forward
    from mlx_qat.data.shards import load_bundle

    _dequantized_forward()
    model, _, config = load(str(args.work / "float"), return_config=True)
    q_model = copy.deepcopy(model)
    quantize_model(q_model, config, group_size=64, bits=args.bits)
    model.freeze()
    n, L = 2 * args.batch_size, args.seq_len + 1
    w = np.asarray(load_bundle(data_dir(args.work)).train[: n * L]).reshape(n, L)
    windows = [(r.tolist(), 0) for r in w]
    opt = optim.Adam(learning_rate=1e-4, bias_correction=True)
    held = {"weights": nbytes(q_model.parameters()), "teacher": nbytes(model.parameters())}
    mx.reset_peak_memory()
    dwq_quantize(
        q_model, lambda b, i, split: mx.stop_gradient(model(b)), opt, windows,
        windows[: args.batch_size], args.batch_size, L, 0, dtype=mx.float32,
    )  # fmt: skip
    held["optimizer"] = nbytes(opt.state)
    return {"held": held, "peak": mx.get_peak_memory()}


def child(args) -> None:
    import mlx.core as mx

    mx.set_cache_limit(0)  # the peak is what the step needs, not what the cache keeps
    r = case_dwq(args) if args.case == "dwq" else case_qat(args, args.case)
    print("RESULT " + json.dumps(r), flush=True)


def main() -> None:
    reexec_with_openblas()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/mlx_qat_bench_pretrained"))
    p.add_argument("--cases", default="dwq,grid,kd,ce")
    p.add_argument("--bits", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--name", default="memory_smollm2")
    p.add_argument("--case")
    args = p.parse_args()
    if args.case:
        child(args)
        return
    rows = {}
    for case in args.cases.split(","):
        cmd = [sys.executable, __file__, "--case", case, "--work", str(args.work),
               "--bits", str(args.bits), "--batch-size", str(args.batch_size),
               "--seq-len", str(args.seq_len)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode or not line:
            raise SystemExit(f"{case} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        rows[case] = json.loads(line[0].removeprefix("RESULT "))
        print(case, rows[case], flush=True)
    write(args, rows)


def write(args, rows: dict) -> None:
    cmd = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# Memory of a {args.bits}-bit fine-tune of SmolLM2-135M: DWQ vs mlx_qat.train", ""]
    lines += header_lines(cmd, date, machine())
    lines += ["", "| case | student weights | optimizer state | teacher | step transient | peak |"
              " peak / DWQ |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    base = rows.get("dwq", {}).get("peak")
    for case, r in rows.items():
        h = r["held"]
        held = sum(h.values())
        cells = [case] + [f"{h.get(k, 0) / GB:.2f} GB" for k in ("weights", "optimizer", "teacher")]
        cells += [f"{(r['peak'] - held) / GB:.2f} GB", f"{r['peak'] / GB:.2f} GB",
                  f"{r['peak'] / base:.2f}" if base else "-"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Batch {args.batch_size} x {args.seq_len} tokens, two optimizer steps, MLX's "
              "buffer cache off (`mx.set_cache_limit(0)`), so the peak is what the arrays "
              "need. Step transient = peak - the held arrays."]  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"command": cmd, "date": date, "machine": machine(), "rows": rows,
           "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}  # fmt: skip
    (RESULTS / f"{args.name}.json").write_text(json.dumps(out, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
