"""Benchmark: one training step, FP (fake quant off) vs QAT (fake quant on), same model.

For each model size (presets `d2` and `d6` by default) and one batch (8 x 256 tokens), two
identically initialised prepared models get the trainer's own compiled step
(`mlx_qat.train.step.make_step`: loss, gradients, clipping, AdamW): one with fake quant off,
one with it on (4-bit affine, group 64; embeddings at 4 bits), for each quantizer (`minmax`,
and `learned_affine`, the main job's; its scale/bias initialised from the weights). After a
warm-up (compilation) the two are alternated step by step, so load from other jobs hits both
alike, and the ratio of the medians is reported, with the peak memory of each step.

On Linux the whole measurement runs twice in fresh processes: with Debian's OpenBLAS
preloaded (what `mlx_qat` entry points do) and with MLX's bundled reference BLAS
(`MLX_QAT_NO_OPENBLAS=1`). A benchmark never asserts. Writes
benchmarks/results/train_step.{md,json}.

    python benchmarks/bench_train_step.py [--sizes d2 d6] [--batch 8] [--seq 256]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def machine() -> dict:
    from benchmarks.common import machine as base

    return base()


def measure(
    size: str, quantizer: str, batch: int, seq: int, warmup: int, repeats: int, vocab: int
) -> dict:
    """Alternate FP and QAT steps of the same model; medians, ratio, peak memory."""
    import mlx.core as mx

    from mlx_qat.data import TokenBatches  # noqa: F401  (same import cost as the trainer)
    from mlx_qat.models import model_from_config, preset_config
    from mlx_qat.models.build import qat_config
    from mlx_qat.models.sizing import parameter_bytes
    from mlx_qat.prepare import init_quantizers, prepare
    from mlx_qat.train.config import TrainConfig
    from mlx_qat.train.optim import build_optimizer, set_lr
    from mlx_qat.train.step import make_step

    mx.set_cache_limit(4 << 30)
    cfg = TrainConfig(bits=4, group_size=64, lr=1e-3, quantizer=quantizer)
    steps, n_params = {}, 0
    for mode in ("fp", "qat"):
        mx.random.seed(0)
        model = model_from_config(preset_config(size, vocab))
        prepare(model, qat_config(cfg), enabled=(mode == "qat"))
        if mode == "qat":
            init_quantizers(model)  # learnable grids start from the weights, as at the switch
        mx.eval(model.parameters())
        n_params = parameter_bytes(model).n_params
        opt = build_optimizer(model, cfg)
        set_lr(opt, cfg.lr)
        steps[mode] = (make_step(model, opt, cfg.grad_clip), model, opt)
    x = mx.random.randint(0, vocab, (batch, seq + 1)).astype(mx.int32)
    times = {"fp": [], "qat": []}
    peak = {"fp": 0.0, "qat": 0.0}
    for i in range(warmup + repeats):
        for mode in ("fp", "qat") if i % 2 == 0 else ("qat", "fp"):
            fn, model, opt = steps[mode]
            mx.reset_peak_memory()
            t0 = time.perf_counter()
            loss, norm = fn([x])
            mx.eval(loss, norm, model.state, opt.state)
            dt = time.perf_counter() - t0
            if i >= warmup:
                times[mode].append(dt)
                peak[mode] = max(peak[mode], mx.get_peak_memory() / 2**20)
    med = {m: statistics.median(t) for m, t in times.items()}
    return {
        "size": size,
        "quantizer": quantizer,
        "params": n_params,
        "batch": batch,
        "seq": seq,
        "tokens_per_step": batch * seq,
        "fp_ms": 1000 * med["fp"],
        "qat_ms": 1000 * med["qat"],
        "fp_best_ms": 1000 * min(times["fp"]),
        "qat_best_ms": 1000 * min(times["qat"]),
        "ratio": med["qat"] / med["fp"],
        "fp_tokens_per_s": batch * seq / med["fp"],
        "qat_tokens_per_s": batch * seq / med["qat"],
        "fp_peak_mb": peak["fp"],
        "qat_peak_mb": peak["qat"],
        "repeats": repeats,
    }


def worker(args) -> None:
    rows = [
        measure(s, q, args.batch, args.seq, args.warmup, args.repeats, args.vocab)
        for s in args.sizes
        for q in args.quantizers
    ]
    print(json.dumps({"openblas": "openblas" in os.environ.get("LD_PRELOAD", ""), "rows": rows}))


def run_worker(argv: list[str], openblas: bool, repeats: int) -> dict:
    from mlx_qat.blas import find_openblas

    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    env["MLX_QAT_BLAS_REEXEC"] = "1"
    if openblas:
        lib = find_openblas()
        if lib is None:
            return {"openblas": False, "rows": [], "skipped": "libopenblas.so.0 not found"}
        env["LD_PRELOAD"] = lib
    else:
        env["MLX_QAT_NO_OPENBLAS"] = "1"
    cmd = [sys.executable, __file__, "--worker", *argv, "--repeats", str(repeats)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    lines = [
        "| BLAS | model | quantizer | params | tokens/step | FP ms | QAT ms | QAT/FP | FP tok/s | "
        "QAT tok/s | FP peak MiB | QAT peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        blas = "OpenBLAS" if res["openblas"] else "reference (bundled)"
        for r in res["rows"]:
            lines.append(
                f"| {blas} | {r['size']} | {r.get('quantizer', 'minmax')} | {r['params'] / 1e6:.2f} M | "
                f"{r['tokens_per_step']} | "
                f"{r['fp_ms']:.0f} | {r['qat_ms']:.0f} | **{r['ratio']:.3f}** | "
                f"{r['fp_tokens_per_s']:,.0f} | {r['qat_tokens_per_s']:,.0f} | "
                f"{r['fp_peak_mb']:.0f} | {r['qat_peak_mb']:.0f} |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", default=["d2", "d6"])
    p.add_argument("--quantizers", nargs="+", default=["minmax", "learned_affine"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=9, help="alternated pairs (OpenBLAS)")
    p.add_argument("--ref-repeats", type=int, default=3, help="pairs with the reference BLAS")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    argv = [
        "--sizes",
        *args.sizes,
        "--quantizers",
        *args.quantizers,
        "--batch",
        str(args.batch),
        "--seq",
        str(args.seq),
    ]
    argv += ["--vocab", str(args.vocab), "--warmup", str(args.warmup)]
    results = [run_worker(argv, True, args.repeats)]
    if sys.platform.startswith("linux"):
        results.append(run_worker(argv, False, args.ref_repeats))
    cmd = "python " + " ".join([str(Path(__file__).relative_to(ROOT)), *sys.argv[1:]])
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    payload = {"command": cmd, "date": date, "machine": machine(), "results": results}
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_step.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / "train_step.md").write_text(render(payload))
    print(table(results))


def render(payload: dict) -> str:
    """The markdown report of one benchmark run."""
    info, results = payload["machine"], payload["results"]
    md = [
        "# Training step: FP vs QAT (fake quant on), with and without OpenBLAS",
        "",
        f"- command: `{payload['command']}`",
        f"- date: {payload['date']}",
        f"- machine: {info['platform']}, {info['cpu']}, {info['cores']} cores",
        f"- mlx {info['mlx']} ({info['backend']} backend), mlx-lm {info['mlx_lm']}, "
        f"python {info['python']}",
        "- step: the trainer's compiled step (loss, grads, clip, AdamW); 4-bit affine g64 "
        "fake quant (quantizer column) on every linear and the tied embedding; FP and QAT alternated "
        "after a warm-up; medians. Target: QAT/FP <= 1.10.",
        "",
        table(results),
        "",
    ]
    by = {
        (r["openblas"], row["size"], row.get("quantizer", "minmax")): row
        for r in results
        for row in r["rows"]
    }
    lines = []
    for (blas, size, quantizer), row in by.items():
        ref = by.get((False, size, quantizer))
        if blas and ref:
            lines.append(
                f"- {size}, {quantizer}: OpenBLAS makes the FP step {ref['fp_ms'] / row['fp_ms']:.1f}x and "
                f"the QAT step {ref['qat_ms'] / row['qat_ms']:.1f}x faster than MLX's bundled "
                "reference BLAS."
            )
    if lines:
        md += ["What OpenBLAS changes (same process otherwise, `LD_PRELOAD`):", "", *lines, ""]
    return "\n".join(md)


if __name__ == "__main__":
    main()
