"""Benchmark: `mlx_lm.generate` tokens/s of an exported quantized model vs its float version.

Converts one run twice with `mlx_qat.convert` (the trained grid, and `--dequantize`: the same
weights as floats), loads both with `mlx_lm.load` and generates from the same prompt, A/B
alternated (ABBA order), after a warm-up, reporting the median of `--repeats` rounds. EOS is
masked so every round generates exactly `--max-tokens` tokens. Writes
benchmarks/results/generate.{md,json}.

    python benchmarks/bench_generate.py --run runs/main
    python benchmarks/bench_generate.py            # the minmax-4bit run bench_convert trained

(Re-executes itself with OpenBLAS preloaded, see `mlx_qat.blas`.)
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mlx.core as mx  # noqa: E402

from benchmarks.common import header_lines, machine  # noqa: E402
from mlx_qat.blas import reexec_with_openblas  # noqa: E402
from mlx_qat.convert import convert  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_RUN = Path("/tmp/mlx_qat_bench_convert/runs/minmax-4bit")


def no_eos(eos_ids):
    """A logits processor that forbids EOS, so each round has the same number of tokens."""
    ids = mx.array(sorted(eos_ids))

    def proc(tokens, logits):
        logits[..., ids] = -float("inf")
        return logits

    return proc


def generate_once(model, tok, prompt: str, max_tokens: int) -> dict:
    from mlx_lm import stream_generate

    last = None
    eos = [no_eos(tok.eos_token_ids)]
    for response in stream_generate(
        model, tok, prompt, max_tokens=max_tokens, logits_processors=eos
    ):
        last = response
    return {
        "generation_tps": last.generation_tps,
        "prompt_tps": last.prompt_tps,
        "generation_tokens": last.generation_tokens,
        "prompt_tokens": last.prompt_tokens,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default=str(DEFAULT_RUN), help="QAT run or checkpoint directory")
    p.add_argument("--work", default="/tmp/mlx_qat_bench_generate", help="scratch directory")
    p.add_argument("--dtype", default=None, help="export dtype of both models (default: convert's)")
    p.add_argument("--prompt", default="It is a truth universally acknowledged, that")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--name", default="generate", help="results file stem")
    p.add_argument("--note", default="", help="where the run came from (written to the .md)")
    args = p.parse_args(argv)
    reexec_with_openblas()
    from mlx_lm import load

    run, work = Path(args.run), Path(args.work)
    if not run.exists():
        p.error(f"--run {run} does not exist; train one (or run bench_convert.py first)")
    conv = {
        "quantized": convert(
            run, work / "quantized", dtype=args.dtype, force=True, parity_batches=1
        ),
        "float": convert(
            run, work / "float", dtype=args.dtype, dequantize=True, force=True, parity_batches=1
        ),
    }
    models = {k: load(str(work / k)) for k in conv}
    for model, tok in models.values():  # warm-up: compile paths, fill caches
        generate_once(model, tok, args.prompt, 16)
    rounds: dict[str, list[dict]] = {k: [] for k in models}
    for r in range(args.repeats):
        order = list(models) if r % 2 == 0 else list(models)[::-1]
        for k in order:
            model, tok = models[k]
            rounds[k].append(generate_once(model, tok, args.prompt, args.max_tokens))
    med = {
        k: {m: statistics.median(x[m] for x in v) for m in ("generation_tps", "prompt_tps")}
        for k, v in rounds.items()
    }
    ratio = med["quantized"]["generation_tps"] / med["float"]["generation_tps"]
    cmd = shlex.join(["python", "benchmarks/bench_generate.py", *(argv or sys.argv[1:])])
    meta = {"command": cmd.strip(), "date": datetime.date.today().isoformat(), "machine": machine()}
    out = {
        **meta,
        "run": str(run),
        "note": args.note,
        "args": vars(args),
        "models": {
            k: {
                "format": c.quantization,
                "dtype": c.dtype,
                "bits_per_weight": c.bits_per_weight,
                "total_bytes": c.total_bytes,
                "files_bytes": sum(c.files.values()),
                "num_parameters": c.num_parameters,
                "parity": c.parity,
            }
            for k, c in conv.items()
        },
        "rounds": rounds,
        "median": med,
        "ratio_generation_tps_quantized_over_float": ratio,
    }
    m = meta["machine"]
    q = conv["quantized"].quantization or {}
    lines = [
        "# Generation benchmark: exported quantized model vs its float version (`mlx_lm`)",
        "",
        *header_lines(meta["command"], meta["date"], m),
        f"Run: `{run}` ({conv['quantized'].num_parameters:,} parameters); format "
        f"{q.get('mode', '?')} {q.get('bits', '?')}-bit g{q.get('group_size', '?')}; "
        f"prompt {rounds['float'][0]['prompt_tokens']} tokens, {args.max_tokens} generated "
        f"(EOS masked); median of {args.repeats} rounds, A/B alternated after a warm-up.",
        *([args.note, ""] if args.note else [""]),
        "| model | dtype | bits/weight | weight file bytes | generation tok/s | prompt tok/s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for k, c in conv.items():
        lines.append(
            f"| {k} | {c.dtype} | {c.bits_per_weight:.3f} | {sum(c.files.values()):,} | "
            f"{med[k]['generation_tps']:.1f} | {med[k]['prompt_tps']:.1f} |"
        )
    lines += [
        "",
        f"Quantized / float generation speed: {ratio:.2f}x; size ratio "
        f"{conv['quantized'].total_bytes / conv['float'].total_bytes:.3f}.",
        "",
    ]
    md = "\n".join(lines)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.md").write_text(md)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(out, indent=2, default=str))
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
