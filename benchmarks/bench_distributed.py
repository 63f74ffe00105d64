"""Benchmark: data-parallel training on 1 vs 2 local processes (MLX ring backend), and the
cost of the gradient all-reduce.

For each model size (presets `d2` and `d6` by default) and one global batch (8 x 256 tokens),
the trainer's compiled QAT step (`mlx_qat.train.step.make_step`: 4-bit affine g64 fake quant,
loss, gradients, `nn.average_gradients` over the processes, clipping, AdamW) is timed in:

- 1 process: the whole global batch;
- 2 processes (`mlx.launch --backend ring -n 2`), each its half of the rows, OpenBLAS with its
  default threads (what a user gets);
- 2 processes with one OpenBLAS thread each (`OPENBLAS_NUM_THREADS=1`: no oversubscription of
  the cores).

In the 2-process runs each rank also times, between barriers, the step on its half batch
without any communication (`compute`) and `nn.average_gradients` alone on the real gradient
tree (`all-reduce`, the step's only exchange: one all_sum per 32 MiB bucket). Step times are
rank 0's, after a barrier, medians over the repeats; configurations alternate over `--rounds`
fresh launches so that load from other jobs hits each alike, and the median over rounds is
reported. Workers preload Debian's OpenBLAS as `mlx_qat`'s entry points do. A benchmark never
asserts. Writes benchmarks/results/distributed.{md,json} (or `--out DIR`).

    python benchmarks/bench_distributed.py [--sizes d2 d6] [--batch 8] [--seq 256] [--rounds 2]
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
sys.path.insert(0, str(ROOT / "tests"))

from mlx_launch import ring_command  # noqa: E402  (shared with the tests)

CONFIGS = (("1 process", 1, None), ("2 processes", 2, None), ("2 processes, 1 BLAS thread", 2, 1))


def _median_ms(times: list[float]) -> float:
    return 1000 * statistics.median(times)


def measure(size: str, args) -> dict:
    """Time this process's part of the data-parallel step (rank 0 reports)."""
    import mlx.core as mx
    import mlx.nn as nn

    from mlx_qat.models import model_from_config, preset_config
    from mlx_qat.models.build import qat_config
    from mlx_qat.models.sizing import parameter_bytes
    from mlx_qat.prepare import init_quantizers, prepare
    from mlx_qat.train.config import TrainConfig
    from mlx_qat.train.optim import build_optimizer, set_lr
    from mlx_qat.train.step import loss_fn, make_step

    g = mx.distributed.init()
    n, r = g.size(), g.rank()
    group = g if n > 1 else None

    def barrier() -> None:
        if n > 1:
            mx.eval(mx.distributed.all_sum(mx.array(1.0), group=g, stream=mx.cpu))

    mx.set_cache_limit(4 << 30)
    cfg = TrainConfig(bits=4, group_size=64, lr=1e-3)
    mx.random.seed(0)
    model = model_from_config(preset_config(size, args.vocab))
    prepare(model, qat_config(cfg), enabled=True)
    init_quantizers(model)
    mx.eval(model.parameters())
    opt = build_optimizer(model, cfg)
    set_lr(opt, cfg.lr)
    x = mx.random.randint(0, args.vocab, (args.batch, args.seq + 1), key=mx.random.key(1))
    k = args.batch // n
    rows = x.astype(mx.int32)[r * k : (r + 1) * k]

    def timed(fn, count: int) -> list[float]:
        out = []
        for i in range(args.warmup + count):
            barrier()
            t0 = time.perf_counter()
            fn()
            if i >= args.warmup:
                out.append(time.perf_counter() - t0)
        return out

    def run(step):
        loss, norm = step([rows])
        mx.eval(loss, norm, model.state, opt.state)

    dp = make_step(model, opt, cfg.grad_clip, group=group)
    row = {
        "size": size,
        "params": parameter_bytes(model).n_params,
        "processes": n,
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
        "tokens_per_step": args.batch * args.seq,
        "step_ms": _median_ms(timed(lambda: run(dp), args.repeats)),
    }
    row["tokens_per_s"] = row["tokens_per_step"] / (row["step_ms"] / 1000)
    if n > 1:
        local = make_step(model, opt, cfg.grad_clip)  # the same step, no exchange
        row["compute_ms"] = _median_ms(timed(lambda: run(local), args.repeats))
        _, grads = nn.value_and_grad(model, loss_fn)(model, rows[:, :-1], rows[:, 1:])
        mx.eval(grads)
        row["grad_mib"] = sum(v.nbytes for _, v in _leaves(grads)) / 2**20

        def reduce() -> None:
            mx.eval(nn.average_gradients(grads, group=g, communication_stream=mx.cpu))

        row["allreduce_ms"] = _median_ms(timed(reduce, args.repeats * 3))
    return row


def _leaves(tree):
    from mlx.utils import tree_flatten

    return tree_flatten(tree)


def worker(args) -> None:
    import mlx.core as mx

    rows = [measure(s, args) for s in args.sizes]
    if mx.distributed.init().rank() == 0:
        print("RESULT " + json.dumps(rows), flush=True)


def run_config(n: int, threads: int | None, argv: list[str]) -> list[dict]:
    """One launch of the worker on `n` processes; rank 0's rows."""
    from mlx_qat.blas import find_openblas

    env = dict(os.environ)
    env.pop("OPENBLAS_NUM_THREADS", None)
    lib = find_openblas()
    if lib:
        env["LD_PRELOAD"] = lib
    if threads:
        env["OPENBLAS_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, __file__, "--worker", *argv]
    if n > 1:
        cmd = ring_command(__file__, "--worker", *argv, n=n)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, timeout=3600)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def summarize(rounds: list[dict]) -> list[dict]:
    """Median over rounds of each (config, size) row; speed-up against 1 process."""
    by: dict = {}
    for rnd in rounds:
        for name, rows in rnd.items():
            for row in rows:
                by.setdefault((name, row["size"]), []).append(row)
    out = []
    for (name, _size), rows in by.items():
        med = dict(rows[0])
        for key in ("step_ms", "tokens_per_s", "compute_ms", "allreduce_ms"):
            if key in rows[0]:
                med[key] = statistics.median(r[key] for r in rows)
        med["config"] = name
        out.append(med)
    base = {r["size"]: r["tokens_per_s"] for r in out if r["processes"] == 1}
    for r in out:
        r["speedup"] = r["tokens_per_s"] / base[r["size"]] if r["size"] in base else None
    return out


def table(rows: list[dict]) -> str:
    lines = [
        "| model | params | configuration | step ms | tokens/s | vs 1 process | compute ms "
        "(half batch, no exchange) | gradients MiB | all-reduce ms | all-reduce / step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["params"], r["processes"], r["blas_threads"])):
        ar = r.get("allreduce_ms")
        lines.append(
            f"| {r['size']} | {r['params'] / 1e6:.2f} M | {r['config']} | {r['step_ms']:.0f} | "
            f"{r['tokens_per_s']:,.0f} | **{r['speedup']:.2f}x** | "
            + (f"{r['compute_ms']:.0f} | {r['grad_mib']:.1f} | {ar:.1f} | {ar / r['step_ms']:.0%} |"
               if ar is not None else "- | - | - | - |")
        )  # fmt: skip
    return "\n".join(lines)


def reading(rows: list[dict]) -> list[str]:
    """What the numbers say, per model size."""
    out = ["What it shows:", ""]
    one = {r["size"]: r for r in rows if r["processes"] == 1}
    for r in rows:
        base = one.get(r["size"])
        if r["processes"] == 1 or base is None or r["blas_threads"] == "default":
            continue
        mb_s = r["grad_mib"] * 2**20 / (r["allreduce_ms"] / 1000) / 1e6
        out.append(
            f"- {r['size']} ({r['params'] / 1e6:.2f} M parameters): averaging "
            f"{r['grad_mib']:.1f} MiB of gradients takes {r['allreduce_ms']:.0f} ms "
            f"({mb_s:.0f} MB/s of gradient over loopback), {r['allreduce_ms'] / r['step_ms']:.0%} "
            f"of the 2-process step. The step is {r['speedup']:.2f}x the single process's "
            f"throughput because each process's half batch alone takes {r['compute_ms']:.0f} ms "
            f"on its core, against {base['step_ms']:.0f} ms for the whole batch in one process, "
            "whose OpenBLAS already uses both cores."
        )
    out += [
        "- With OpenBLAS's default threads each process starts one thread per core, four on two "
        "cores: the oversubscribed runs are slower still and erratic. Give each process "
        "`OPENBLAS_NUM_THREADS` = cores / processes.",
        "- Data parallelism pays where each process has its own cores or GPU (several Macs); "
        "on one machine it is for testing the distributed path. The exchange's cost grows "
        "with the parameter count, not with the batch: a larger batch per step amortises it.",
        "",
    ]
    return out


def render(payload: dict) -> str:
    from benchmarks.common import header_lines

    rows = payload["rows"]
    md = [
        "# Data-parallel training: 1 vs 2 local processes (ring backend)",
        "",
        *header_lines(payload["command"], payload["date"], payload["machine"]),
        "",
        "The trainer's compiled QAT step (4-bit affine g64 fake quant on every linear and the "
        f"tied embedding) on a global batch of {payload['batch']} x {payload['seq']} tokens; "
        "2 processes each take half the rows and average their gradients with "
        "`nn.average_gradients` (CPU stream). Medians over repeats and over "
        f"{payload['rounds']} alternated rounds; step time is rank 0's after a barrier. Load "
        f"average before the benchmark: {payload.get('load_avg_before', float('nan')):.1f} (the "
        "one above, taken at the end, includes the benchmark's own processes).",
        "",
        table(rows),
        "",
        *reading(rows),
        "- **compute**: the same step on a rank's half batch without the exchange, timed while "
        "the other rank does the same (both share the cores);",
        "- **all-reduce**: `nn.average_gradients` alone on the real gradient tree (one all_sum "
        "per 32 MiB bucket over loopback TCP), between barriers.",
        "",
    ]
    return "\n".join(md)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", default=["d2", "d6"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--rounds", type=int, default=2, help="alternated launches of each config")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="results folder")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if args.batch % 2:
        p.error(f"--batch {args.batch}: must be even (2 processes take half the rows each)")
    argv = ["--sizes", *args.sizes, "--batch", str(args.batch), "--seq", str(args.seq),
            "--vocab", str(args.vocab), "--warmup", str(args.warmup),
            "--repeats", str(args.repeats)]  # fmt: skip
    load_before = os.getloadavg()[0]  # the header's load average is taken after, ours included
    rounds = []
    for i in range(args.rounds):
        order = CONFIGS if i % 2 == 0 else CONFIGS[::-1]
        rounds.append({name: run_config(n, t, argv) for name, n, t in order})
    from benchmarks.common import machine
    from mlx_qat.blas import find_openblas

    info = machine()
    info["openblas"] = find_openblas() is not None  # the workers preload it
    cmd = "python " + " ".join([str(Path(__file__).relative_to(ROOT)), *sys.argv[1:]])
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    payload = {
        "command": cmd,
        "date": date,
        "machine": info,
        "batch": args.batch,
        "seq": args.seq,
        "rounds": args.rounds,
        "load_avg_before": load_before,
        "rows": summarize(rounds),
        "raw": rounds,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "distributed.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / "distributed.md").write_text(render(payload))
    print(table(payload["rows"]))


if __name__ == "__main__":
    main()
