"""Benchmark: `mlx_qat.convert` per quantizer and dtype: train = deploy, size, FP/PTQ/QAT losses.

For each run (given with --run, or trained here: one FP trunk on the shared corpus, then a
short QAT branch per quantizer, saved in the trainer's checkpoint format), converts with the
trained grid in float32, bfloat16 and float16, with --ptq and --dequantize, and records the
validation losses the parity check measured (fake-quant model vs the exported directory loaded
by `mlx_lm.load`), bits per weight, bytes and convert wall time. Writes
benchmarks/results/convert.{md,json}.

    python benchmarks/bench_convert.py                 # trains its own small runs
    python benchmarks/bench_convert.py --run runs/main

(Re-executes itself with OpenBLAS preloaded, see `mlx_qat.blas`.)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import mlx.optimizers as optim  # noqa: E402
import yaml  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

from benchmarks.common import header_lines, machine  # noqa: E402
from mlx_qat.blas import reexec_with_openblas  # noqa: E402
from mlx_qat.convert import ParityError, convert  # noqa: E402
from mlx_qat.data import TokenBatches, prepare_data  # noqa: E402
from mlx_qat.prepare import init_quantizers, prepare, set_fake_quant  # noqa: E402
from mlx_qat.qat_config import QATConfig  # noqa: E402
from mlx_qat.quant import QuantSpec  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"

QUANTIZERS = {
    "minmax-4bit": QATConfig(weights=QuantSpec("affine", 4, 64)),
    "lsq-2bit": QATConfig(weights=QuantSpec("affine", 2, 64), quantizer="lsq"),
    "lsq-3bit": QATConfig(weights=QuantSpec("affine", 3, 64), quantizer="lsq"),
    "lsq-4bit": QATConfig(weights=QuantSpec("affine", 4, 64), quantizer="lsq"),
    "learned_affine-4bit": QATConfig(
        weights=QuantSpec("affine", 4, 64), quantizer="learned_affine"
    ),
    "minmax-mxfp4": QATConfig(weights=QuantSpec("mxfp4", 4, 32)),
    "minmax-4bit-scale-f16": QATConfig(weights=QuantSpec("affine", 4, 64), scale_dtype="float16"),
}


# ---- a small run, saved in the trainer's checkpoint format -----------------------------


def model_config(args) -> dict:
    return {
        "model_type": "llama",
        "hidden_size": args.hidden,
        "num_hidden_layers": args.layers,
        "intermediate_size": 3 * args.hidden,
        "num_attention_heads": max(args.hidden // 64, 1),
        "rms_norm_eps": 1e-5,
        "vocab_size": args.vocab,
        "tie_word_embeddings": True,
        "max_position_embeddings": args.seq_len,
    }


def loss_fn(model, x):
    return nn.losses.cross_entropy(model(x[:, :-1]).astype(mx.float32), x[:, 1:], reduction="mean")


def train_steps(model, opt, batches, first, steps):
    step_fn = nn.value_and_grad(model, loss_fn)
    loss = None
    for s in range(first, first + steps):
        loss, grads = step_fn(model, batches.batch(s))
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state)
    return loss.item()


def save_checkpoint(run_dir: Path, data, args, model, opt, qcfg, step, phase):
    run_dir.mkdir(parents=True, exist_ok=True)
    flat = {"data": [str(data.path)], "seq_len": args.seq_len, "batch_size": args.batch}
    flat["eval_batches"] = args.eval_batches
    (run_dir / "config.yaml").write_text(yaml.safe_dump(flat))
    if not (run_dir / "tokenizer").exists():
        shutil.copytree(data.tokenizer_dir, run_dir / "tokenizer")
    ckpt = run_dir / "checkpoints" / f"step_{step:08d}"
    tmp = ckpt.with_name(ckpt.name + f".tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    mx.save_safetensors(str(tmp / "model.safetensors"), dict(tree_flatten(model.parameters())))
    mx.save_safetensors(str(tmp / "optimizer.safetensors"), dict(tree_flatten(opt.state)))
    (tmp / "config.json").write_text(json.dumps(model_config(args)))
    qat = {"qat_config": qcfg.to_dict(), "fake_quant": phase == "qat", "phase": phase}
    (tmp / "qat.json").write_text(json.dumps(qat))
    (tmp / "state.json").write_text(json.dumps({"step": step, "phase": phase}))
    tmp.rename(ckpt)


def train_runs(args, work: Path) -> list[tuple[str, Path]]:
    """One FP trunk, then a QAT branch per quantizer (what a sweep does), saved as runs."""
    from mlx_lm.models import llama

    data = prepare_data(args.data, work / "data", vocab_size=args.vocab)
    batches = TokenBatches(data.train, args.batch, args.seq_len, seed=0)
    mx.random.seed(0)
    trunk = llama.Model(llama.ModelArgs.from_dict(model_config(args)))
    opt = optim.Adam(learning_rate=args.lr)
    t = time.perf_counter()
    fp_loss = train_steps(trunk, opt, batches, 0, args.fp_steps)
    print(f"FP trunk: {args.fp_steps} steps, loss {fp_loss:.3f} ({time.perf_counter() - t:.0f} s)")
    trunk_weights = dict(tree_flatten(trunk.parameters()))
    runs = []
    for name, qcfg in QUANTIZERS.items():
        model = llama.Model(llama.ModelArgs.from_dict(model_config(args)))
        model.load_weights(list(trunk_weights.items()))
        prepare(model, qcfg, enabled=False)
        init_quantizers(model)
        set_fake_quant(model, True)
        opt = optim.Adam(learning_rate=args.lr / 3)
        t = time.perf_counter()
        loss = train_steps(model, opt, batches, args.fp_steps, args.qat_steps)
        step = args.fp_steps + args.qat_steps
        save_checkpoint(work / "runs" / name, data, args, model, opt, qcfg, step, "qat")
        print(
            f"QAT {name}: {args.qat_steps} steps, loss {loss:.3f} ({time.perf_counter() - t:.0f} s)"
        )
        runs.append((name, work / "runs" / name))
    return runs


# ---- conversions ------------------------------------------------------------------------


def one(run: Path, out: Path, **kw) -> dict:
    t = time.perf_counter()
    try:
        r = convert(run, out, force=True, **kw).to_dict()
    except ParityError as e:
        r = {"parity": e.report.to_dict(), "error": str(e)}
    r["wall_s"] = round(time.perf_counter() - t, 2)
    return r


def bench_run(name: str, run: Path, work: Path, args) -> dict:
    out = work / "out" / name
    res = {"run": str(run)}
    res["qat_float32"] = one(run, out / "qat_f32", dtype="float32")
    for dt in ("bfloat16", "float16"):
        # MLX's CPU quantized kernels are slow in half precision: fewer parity batches.
        res[f"qat_{dt}"] = one(run, out / f"qat_{dt}", dtype=dt, parity_batches=args.half_batches)
    res["ptq_float32"] = one(run, out / "ptq_f32", ptq=True, dtype="float32")
    res["dequantized_float32"] = one(run, out / "deq_f32", dequantize=True, dtype="float32")
    twin = run / "fp_twin"
    if (twin / "checkpoints").is_dir():  # the trainer's FP model of the same budget
        res["fp_twin_ptq_float32"] = one(twin, out / "twin_ptq_f32", ptq=True, dtype="float32")
    return res


def _p(r: dict, key: str, fmt: str = ".4f") -> str:
    p = r.get("parity") or {}
    v = p.get(key)
    return "—" if v is None else format(v, fmt)


def markdown(results: dict, meta: dict, cmd: str) -> str:
    m = meta["machine"]
    lines = [
        "# Export benchmark: `mlx_qat.convert`, train = deploy per quantizer and dtype",
        "",
        *header_lines(cmd, meta["date"], m),
        f"Runs: {meta['runs_note']}",
        "",
        "Losses are nats/token on the run's validation batches (float32 rows: "
        f"{meta['parity_tokens']} tokens; half-precision rows: fewer batches, see json).",
        "'rel diff' = |exported − fake-quant| / fake-quant, exported = the output directory "
        "loaded by `mlx_lm.load`.",
        "",
        "| run | format | bpw | MB | FP loss | PTQ loss | QAT fake-quant | QAT exported | "
        "rel diff f32 | rel diff bf16 | rel diff f16 | convert s (f32) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        q = r["qat_float32"]
        fmt = q.get("quantization") or {}
        fmt_s = f"{fmt.get('mode', '?')} {fmt.get('bits', '?')}b g{fmt.get('group_size', '?')}"
        bf, f16 = r["qat_bfloat16"], r["qat_float16"]
        lines.append(
            f"| {name} | {fmt_s} | {q.get('bits_per_weight', 0):.3f} | "
            f"{q.get('total_bytes', 0) / 1e6:.2f} | {_p(q, 'fp')} | {_p(r['ptq_float32'], 'exported')} | "
            f"{_p(q, 'reference')} | {_p(q, 'exported')} | {_p(q, 'rel_diff', '.1e')} | "
            f"{_p(bf, 'rel_diff', '.1e')} | {_p(f16, 'rel_diff', '.1e')} | {q['wall_s']:.1f} |"
        )
    twins = {n: r["fp_twin_ptq_float32"] for n, r in results.items() if "fp_twin_ptq_float32" in r}
    if twins:
        lines += [
            "",
            "FP twin (the trainer's float model of the same token budget) and its PTQ, the "
            "baseline QAT must beat:",
            "",
            "| run | FP twin loss | FP twin PTQ (exported) | QAT exported | PTQ gap recovered |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, t in twins.items():
            tp, qp = t.get("parity") or {}, results[name]["qat_float32"].get("parity") or {}
            gap = None
            if tp and qp and tp["exported"] - tp["fp"] > 1e-9:
                gap = (tp["exported"] - qp["exported"]) / (tp["exported"] - tp["fp"])
            gap_s = "—" if gap is None else f"{100 * gap:.1f}%"
            lines.append(
                f"| {name} | {_p(t, 'fp')} | {_p(t, 'exported')} | {_p(results[name]['qat_float32'], 'exported')} | {gap_s} |"
            )
    lines += ["", "Sizes (bits per weight, MB of weights) per conversion:", ""]
    lines += ["| run | QAT f32 | QAT bf16 | QAT f16 | PTQ f32 | float (dequantized) f32 |"]
    lines += ["|---|---|---|---|---|---|"]
    for name, r in results.items():
        cells = []
        for k in (
            "qat_float32",
            "qat_bfloat16",
            "qat_float16",
            "ptq_float32",
            "dequantized_float32",
        ):
            x = r[k]
            cells.append(f"{x.get('bits_per_weight', 0):.2f} / {x.get('total_bytes', 0) / 1e6:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", action="append", help="run/checkpoint dir to convert (repeatable)")
    p.add_argument("--work", default="/tmp/mlx_qat_bench_convert", help="scratch directory")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--fp-steps", type=int, default=300)
    p.add_argument("--qat-steps", type=int, default=60)
    p.add_argument("--eval-batches", type=int, default=4)
    p.add_argument("--half-batches", type=int, default=1, help="parity batches for bf16/f16")
    p.add_argument("--name", default="convert", help="results file stem")
    p.add_argument("--note", default="", help="where the runs came from (written to the .md)")
    args = p.parse_args(argv)
    reexec_with_openblas()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.run:
        runs = [(Path(r).name, Path(r)) for r in args.run]
        note = "given: " + ", ".join(args.run) + (f". {args.note}" if args.note else "")
    else:
        runs = train_runs(args, work)
        note = (
            f"trained here (no main run given): llama hidden {args.hidden}, {args.layers} "
            f"layers, vocab {args.vocab}, {args.fp_steps} FP steps + {args.qat_steps} QAT steps "
            f"per quantizer, batch {args.batch}x{args.seq_len}, shared corpus"
        )
    results = {}
    for name, run in runs:
        results[name] = bench_run(name, run, work, args)
        print(
            f"{name}: {json.dumps({k: (v.get('parity') or {}).get('rel_diff') for k, v in results[name].items() if isinstance(v, dict)})}"
        )
    first = next(iter(results.values()))["qat_float32"].get("parity") or {}
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "runs_note": note,
        "parity_tokens": first.get("num_tokens"),
        "args": vars(args),
    }
    cmd = shlex.join(["python", "benchmarks/bench_convert.py", *(argv or sys.argv[1:])])
    RESULTS.mkdir(parents=True, exist_ok=True)
    md = markdown(results, meta, cmd.strip())
    (RESULTS / f"{args.name}.md").write_text(md)
    (RESULTS / f"{args.name}.json").write_text(
        json.dumps({"command": cmd.strip(), **meta, "results": results}, indent=2, default=str)
    )
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
