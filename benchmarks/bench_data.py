"""Benchmark: all of shared/data -> tokenizer + token shards (``mlx_qat.data``).

Runs ``prepare_data`` from scratch into fresh temporary folders ``--repeats`` times and reports
the phases (hashing inputs, reading + splitting, tokenizer training, encoding) plus the
end-to-end command (``python -m mlx_qat data ...`` in a subprocess, interpreter start-up
included) and a cached re-run. Writes benchmarks/results/data_prepare.{md,json}.

    python benchmarks/bench_data.py [--input ../shared/data] [--vocab-size 4096] [--repeats 3]

The machine may be shared with other jobs: the load average before each run is recorded.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu_name, package_versions  # noqa: E402
from mlx_qat.data import prepare_data  # noqa: E402
from mlx_qat.data.tokenizer import default_threads  # noqa: E402

DATA_PACKAGES = ("mlx", "mlx-lm", "numpy", "sentencepiece", "tokenizers", "transformers")

PHASES = [
    ("hash", "hash inputs (sha256)"),
    ("read", "read + split documents"),
    ("tokenizer", "train tokenizer (BPE)"),
    ("encode", "encode both splits"),
    ("other", "write shards, manifest, HF files"),
    ("total", "prepare_data total"),
]


def run_once(inputs: Path, vocab: int) -> tuple[dict, dict]:
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        load = os.getloadavg()[0]
        b = prepare_data(inputs, tmp, vocab_size=vocab)
        t = dict(b.timings)
        t["other"] = t["total"] - sum(
            t.get(k, 0.0) for k in ("hash", "read", "tokenizer", "encode")
        )
        t["load_avg_1m"] = load
        t0 = time.perf_counter()
        again = prepare_data(inputs, tmp, vocab_size=vocab)
        t["cached_rerun"] = time.perf_counter() - t0
        assert again.built == {"tokenizer": False, "shards": False}
        return t, b.manifest


def run_cli(inputs: Path, vocab: int) -> float:
    with tempfile.TemporaryDirectory(prefix="bench_data_cli_") as tmp:
        cmd = [sys.executable, "-m", "mlx_qat.data", "--input", str(inputs), "--out", tmp]
        cmd += ["--vocab-size", str(vocab), "--quiet"]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    if not args.input.is_dir():
        sys.exit(f"no corpus folder at {args.input}; pass --input")

    runs, manifest = [], None
    for i in range(args.repeats):
        t, manifest = run_once(args.input, args.vocab_size)
        runs.append(t)
        print(
            f"run {i + 1}/{args.repeats}: total {t['total']:.1f}s (load avg {t['load_avg_1m']:.1f})"
        )
    cli = run_cli(args.input, args.vocab_size)

    def stat(key: str) -> tuple[float, float]:
        vals = [r[key] for r in runs]
        return statistics.median(vals), min(vals)

    rows = [(label, *stat(key)) for key, label in PHASES]
    rows.append(("cached re-run (same inputs)", *stat("cached_rerun")))
    rows.append(("CLI end-to-end, 1 run (incl. start-up)", cli, cli))
    train_enc = [r["tokenizer"] + r["encode"] for r in runs]
    m = manifest
    text_mb = (m["text_bytes"]["train"] + m["text_bytes"]["val"]) / 1e6
    tokens = m["tokens"]["train"] + m["tokens"]["val"]
    enc_med = statistics.median(r["encode"] for r in runs)

    cmd = f"python -m mlx_qat data --input {args.input} --out data/ --vocab-size {args.vocab_size}"
    lines = [
        "# Data pipeline benchmark: shared/data -> tokenizer + token shards",
        "",
        f"Command: `{cmd}`  ",
        f"Benchmark: `python benchmarks/bench_data.py --vocab-size {args.vocab_size} "
        f"--repeats {args.repeats}`  ",
        f"Date: {datetime.date.today().isoformat()}  ",
        f"Machine: {platform.platform()}, {cpu_name()}, {os.cpu_count()} cores "
        f"(sentencepiece threads: {default_threads()})  ",
        "Versions: "
        + ", ".join(f"{k} {v}" for k, v in package_versions(DATA_PACKAGES).items())
        + "  ",
        "Load average (1 min) before each run: "
        + ", ".join(f"{r['load_avg_1m']:.1f}" for r in runs)
        + " (the machine is shared; higher means contended cores)",
        "",
        f"Corpus: {len(m['inputs'])} files, {text_mb:.1f} MB of text, "
        f"{m['documents']['train'] + m['documents']['val']:,} documents; "
        f"{tokens:,} tokens at vocab {m['vocab_size']} "
        f"(bytes/token train {m['bytes_per_token']['train']:.3f}, val {m['bytes_per_token']['val']:.3f}); "
        f"encoding {text_mb / enc_med:.1f} MB/s.",
        "",
        f"| phase | median s ({args.repeats} runs) | min s |",
        "|---|---:|---:|",
        *[f"| {label} | {med:.2f} | {mn:.2f} |" for label, med, mn in rows],
        "",
        f"Tokenizer training + encoding: median {statistics.median(train_enc):.1f} s "
        f"(target < 120 s).",
        "",
    ]
    report = "\n".join(lines)
    print()
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "data_prepare.md").write_text(report, encoding="utf-8")
    result = {
        "command": cmd,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "threads": default_threads(),
        },
        "versions": package_versions(DATA_PACKAGES),
        "vocab_size": args.vocab_size,
        "corpus": {
            "files": len(m["inputs"]),
            "text_bytes": m["text_bytes"],
            "documents": m["documents"],
            "tokens": m["tokens"],
            "bytes_per_token": m["bytes_per_token"],
        },
        "runs": runs,
        "cli_end_to_end_s": cli,
        "median_s": {k: stat(k)[0] for k, _ in PHASES},
        "tokenizer_plus_encode_median_s": statistics.median(train_enc),
    }
    (args.out / "data_prepare.json").write_text(
        json.dumps(result, indent=2) + "\n", encoding="utf-8"
    )


if __name__ == "__main__":
    main()
