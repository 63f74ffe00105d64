"""Benchmark: min/max fake-quant forward (and forward+backward) against the memory-bound floor.

For one weight (default 4096×4096) and each dtype, times, alternating all cases in every
repeat after a warm-up call each (so that load from other jobs hits every case alike):

    copy                      `w * 1`: one read + one write, the floor for any fused kernel
    mx.quantize+dequantize    MLX's own round trip (same grid on CPU)
    reference fwd             mlx_qat's pure-MLX reference (kernels disabled)
    fast fwd                  `fake_quantize` as dispatched (quant/affine_cpu.py on CPU,
                              the fused kernel on a GPU)
    fast fwd, 1/2 stream(s)   the CPU path forced without / with the two-stream split
                              ("fast fwd" uses one stream unless MLX_QAT_CPU_STREAMS=2)
    ... compiled              the same under `mx.compile`
    reference / fast fwd+bwd  `mx.vjp` through the STE (cotangent of ones)

and reports milliseconds (median and best), elements/s and the fraction of copy speed
(copy time / case time, from medians). A benchmark never asserts. Writes
benchmarks/results/fake_quant.{md,json}. Run with OpenBLAS preloaded:

    python -m mlx_qat.blas -m benchmarks.bench_fake_quant [--size 4096] [--repeats 9]
        [--fp-modes mxfp4,nvfp4,mxfp8]   (forward-only rows for the microscaling formats)
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

import mlx.core as mx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlx_qat.quant import QuantSpec, affine_cpu, backend, fake_quantize  # noqa: E402

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


def machine() -> dict:
    from benchmarks.common import machine as base

    return {
        **base(),
        "kernels_backend": backend.active_backend(),
        "cpu_split_by_default_at_start": affine_cpu.split_by_default(),
    }


def git_commit() -> str | None:
    try:
        r = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        )
        return r.stdout.strip() or None
    except OSError:
        return None


def with_kernels(enabled: bool, fn):
    def run(*args):
        previous = backend.kernels_enabled()
        backend.set_kernels_enabled(enabled)
        try:
            return fn(*args)
        finally:
            backend.set_kernels_enabled(previous)

    return run


def cases(spec: QuantSpec, backward: bool, compiled: bool) -> dict:
    """name -> function of w returning what to evaluate."""
    bits, gs = spec.bits, spec.group_size

    def qdq(w):
        q = mx.quantize(w, gs, bits, mode=spec.mode)  # (wq, scales[, biases])
        return mx.dequantize(*q, group_size=gs, bits=bits, mode=spec.mode, dtype=w.dtype)

    def fwd(w):
        return fake_quantize(w, spec)

    def fwd_bwd(w):
        out, (dw,) = mx.vjp(fwd, [w], [mx.ones_like(w)])
        return out, dw

    c = {
        "copy": lambda w: w * 1,
        "mx.quantize+dequantize": qdq,
        "reference fwd": with_kernels(False, fwd),
        "fast fwd": with_kernels(True, fwd),
    }
    if mx.default_device() == mx.cpu and spec.is_affine:  # the CPU path's stream variants
        c["fast fwd, 1 stream"] = lambda w: affine_cpu.fake_quant_minmax(w, bits, gs, split=False)
        c["fast fwd, 2 streams"] = lambda w: affine_cpu.fake_quant_minmax(w, bits, gs, split=True)
    if compiled:
        # Distinct functions: mx.compile caches traces by the Python function's identity.
        c["reference fwd, compiled"] = with_kernels(False, mx.compile(lambda w: fwd(w)))
        c["fast fwd, compiled"] = with_kernels(True, mx.compile(lambda w: fwd(w)))
    if backward:
        c["reference fwd+bwd"] = with_kernels(False, fwd_bwd)
        c["fast fwd+bwd"] = with_kernels(True, fwd_bwd)
    return c


def stage_cases(w: mx.array, spec: QuantSpec) -> dict:
    """The CPU path's stages on the whole weight, one stream, inputs precomputed."""
    bits, gs = spec.bits, spec.group_size
    x = w.reshape(-1, gs).astype(mx.float32)
    hi, lo = affine_cpu.group_stats(x)
    s, b = affine_cpu.minmax_grid(hi, lo, bits)
    half = w.shape[0] // 2
    parts = [w[:half] * 1, w[half:] * 1]
    mx.eval(x, hi, lo, s, b, *parts)
    return {
        "stage: max/min (tree + reduce)": lambda _: affine_cpu.group_stats(x),
        "stage: per-group grid": lambda _: affine_cpu.minmax_grid(hi, lo, bits),
        "stage: apply (elementwise)": lambda _: affine_cpu.apply_grid(x, s, b, bits, w.dtype),
        "stage: concatenate halves": lambda _: mx.concatenate(parts, axis=0),
    }


def time_cases(w: mx.array, fns: dict, repeats: int) -> dict:
    for fn in fns.values():  # warm-up (and compile)
        mx.eval(fn(w))
    times: dict[str, list[float]] = {k: [] for k in fns}
    cpu_s = dict.fromkeys(fns, 0.0)
    for _ in range(repeats):
        for name, fn in fns.items():
            c0, t0 = os.times(), time.perf_counter()
            mx.eval(fn(w))
            t1, c1 = time.perf_counter(), os.times()
            times[name].append(t1 - t0)
            cpu_s[name] += (c1.user - c0.user) + (c1.system - c0.system)
    # Process CPU time (all threads) per call: > wall time only when two cores worked.
    times["_cpu_ms"] = {k: v / repeats * 1e3 for k, v in cpu_s.items()}
    return times


def summarise(times: dict, n: int) -> list[dict]:
    copy_med = statistics.median(times["copy"])
    cpu_ms = times.pop("_cpu_ms")
    rows = []
    for name, ts in times.items():
        med, best = statistics.median(ts), min(ts)
        rows.append(
            {
                "case": name,
                "median_ms": round(med * 1e3, 2),
                "best_ms": round(best * 1e3, 2),
                "gelem_per_s": round(n / med / 1e9, 4),
                "fraction_of_copy": round(copy_med / med, 4),
                "fraction_of_copy_best": round(min(times["copy"]) / best, 4),
                "cpu_ms_per_call": round(cpu_ms[name], 1),
            }
        )
    return rows


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Fake-quant forward/backward vs copy (CPU backend)",
        "",
        f"- command: `{result['command']}`",
        f"- date: {result['date']}, commit {result['commit']}",
        f"- machine: {m['platform']}, {m['cpu']}, {m['cores']} cores; MLX {m['mlx']} "
        f"({m['device']}, {m['backend']} backend, OpenBLAS preloaded: {m['openblas']}, "
        f"mlx_qat path: {m['kernels_backend']}, two-stream split chosen at start: "
        f"{m['cpu_split_by_default_at_start']})",
        f"- weight {result['shape'][0]}×{result['shape'][1]}, {result['repeats']} repeats, "
        "all cases alternated within each repeat after one warm-up call each; "
        f"cache limit {result['cache_limit_mib']} MiB",
        f"- load average (1 min) before/after: {result['load_before']} / {result['load_after']} "
        "(other jobs share this machine; 'best' is the least disturbed sample)",
        "",
        "fraction of copy = copy time / case time (medians; 'best' column from best times). "
        "CPU ms = process CPU time per call, all threads: above the wall time only when the "
        "two-stream split really ran on two cores. Stage rows: the CPU path's parts on the whole "
        "weight, one stream (inputs precomputed).",
        "",
    ]
    for block in result["blocks"]:
        lines += [
            f"## {block['dtype']}, {block['spec']}",
            "",
            "| case | median ms | best ms | Gelem/s | × copy speed | × copy (best) | CPU ms |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in block["rows"]:
            lines.append(
                f"| {r['case']} | {r['median_ms']:.2f} | {r['best_ms']:.2f} | "
                f"{r['gelem_per_s']:.3f} | {r['fraction_of_copy']:.3f} | "
                f"{r['fraction_of_copy_best']:.3f} | {r['cpu_ms_per_call']:.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--extra-bits", default="2,8", help="more affine g64 rows (forward only)")
    p.add_argument("--fp-modes", default="", help="fp rows (forward only), e.g. mxfp4,nvfp4")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fake_quant"))
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)

    cache_mib = 4096
    mx.set_cache_limit(cache_mib << 20)
    shape = (args.size, args.size)
    n = shape[0] * shape[1]
    load_before = os.getloadavg()[0]
    blocks = []
    for dname in args.dtypes.split(","):
        dt = DTYPES[dname]
        w = (mx.random.normal(shape, key=mx.random.key(0)) * 0.02).astype(dt)
        mx.eval(w)
        specs = [(QuantSpec("affine", 4, 64), True)]
        specs += [(QuantSpec("affine", int(b), 64), False) for b in args.extra_bits.split(",") if b]
        specs += [(QuantSpec.for_mode(m), False) for m in args.fp_modes.split(",") if m]
        for spec, full in specs:
            fns = cases(spec, backward=full, compiled=full)
            if full and mx.default_device() == mx.cpu:
                fns.update(stage_cases(w, spec))
            rows = summarise(time_cases(w, fns, args.repeats), n)
            blocks.append({"dtype": dname, "spec": str(spec), "rows": rows})
            print(f"{dname} {spec}:")
            for r in rows:
                print(
                    f"  {r['case']:<26} {r['median_ms']:8.2f} ms  (best {r['best_ms']:7.2f})"
                    f"  {r['fraction_of_copy']:.3f} x copy"
                )
    result = {
        "command": "python -m mlx_qat.blas -m benchmarks.bench_fake_quant "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": machine(),
        "shape": list(shape),
        "repeats": args.repeats,
        "cache_limit_mib": cache_mib,
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "blocks": blocks,
    }
    if not args.no_write:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(markdown(result))
        print(f"wrote {out.with_suffix('.md')} and .json")
    return result


if __name__ == "__main__":
    main()
