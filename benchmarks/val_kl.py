"""Re-score `bench_pretrained.py`'s exported models by their KL to the float teacher on the
validation split, and compare choosing each method's setting on that against choosing it on
validation loss (issue #28).

    python benchmarks/val_kl.py --work /tmp/bp2 --float-dir /tmp/bp/float --bits 2,3,4 \
        --report benchmarks/results/pretrained_smollm2_v2.json --name pretrained_smollm2_v2_val_kl

Why: distillation trains the student towards the teacher, and the left-out corpus asks how
much of the teacher it kept outside the training domain. Validation *loss* (cross-entropy
against the next token) also rewards fitting the in-domain text better than the teacher does;
KL(teacher ‖ student) measures only the distance to the teacher. Session 40 found, after the
fact, that the trainer's one-batch test KL ranked rows by left-out recovery better than
validation loss; this script measures the criterion where it may be used for a choice, on
the validation split, and applies it.

For every model folder a bench `--work` still holds (`<B>bit_g<G>/rtn`, `.../seed<S>/<method>/`),
the mean per-token KL(p_teacher ‖ p_student) at temperature 1, in nats, over the same
validation windows `bench_pretrained.py` evaluates (`--val-batches` batches of `--batch-size`
× `--seq-len`, from the work folder's `bench.json`), both models loaded with `mlx_lm.load` and
run in float32 (quantized layers dequantized: the same numbers). The teacher's log-probabilities
are computed once and kept. Rows whose folder is gone (deleted to save disk) are listed as
not re-scored, never guessed.

Output: `benchmarks/results/<name>.json` (`rows`: method name, bits, seed, `val_kl`, and the
report row's val / test / left_out recovered) and `<name>.md`: per width and method family,
the setting validation loss chooses and the one validation KL chooses, with their test and
left-out recovery. (Re-executes itself with OpenBLAS preloaded, see `mlx_qat.blas`.)
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_diagnose_calibration import spearman  # noqa: E402
from benchmarks.bench_pretrained import (  # noqa: E402
    load_float32,
    mean_kl,
    split_windows,
    teacher_logprobs,
)
from benchmarks.common import header_lines, machine  # noqa: E402
from mlx_qat.blas import reexec_with_openblas  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def model_dirs(work: Path, bits: list[int]) -> list[tuple[int, int | None, str, Path]]:
    """(bits, seed, method name, folder) for every exported model under `work`."""
    found = []
    for b in bits:
        for width in sorted(work.glob(f"{b}bit_g*")):
            if (width / "rtn" / "config.json").is_file():
                found.append((b, None, "rtn", width / "rtn"))
            for seed_dir in sorted(width.glob("seed*")):
                for d in sorted(seed_dir.iterdir()):
                    if (d / "config.json").is_file():
                        found.append((b, int(seed_dir.name[4:]), d.name, d))
    return found


def choose(rows: list[dict], key: str) -> dict:
    return min(rows, key=lambda r: r[key])


def report_lines(rows: list[dict], missing: list[dict]) -> list[str]:
    lines = []
    for b in sorted({r["bits"] for r in rows}):
        width = [r for r in rows if r["bits"] == b and r["seed"] in (0, None)]
        lines += [f"\n## {b} bits, seed 0 (and RTN)\n",
                  "| method | val loss | val KL (nats) | test rec. | left-out rec. |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for r in sorted(width, key=lambda r: (r["method"], r["val_kl"])):
            lines.append(f"| {r['name']} | {r['val']:.4f} | {r['val_kl']:.4f} | "
                         f"{100 * r['test_recovered']:.1f} % | "
                         f"{100 * r['left_out_recovered']:.1f} % |")  # fmt: skip
        lines.append("\n| family | chosen on val loss | chosen on val KL |\n|---|---|---|")
        for fam in sorted({r["method"] for r in width}):
            cands = [r for r in width if r["method"] == fam]
            if len(cands) < 2:
                continue
            by_loss, by_kl = choose(cands, "val"), choose(cands, "val_kl")
            cell = lambda r: (f"{r['name']}: {100 * r['test_recovered']:.1f} / "  # noqa: E731
                              f"{100 * r['left_out_recovered']:.1f} %")  # fmt: skip
            lines.append(f"| {fam} ({len(cands)} folders) | {cell(by_loss)} | {cell(by_kl)} |")
        trained = [r for r in width if r["seed"] is not None]
        if len(trained) >= 3:  # lower loss / KL should mean more recovered: report −ρ
            left = [r["left_out_recovered"] for r in trained]
            rho = {k: spearman([r[k] for r in trained], left) for k in ("val", "val_kl")}
            by_val, by_kl = ("n/a" if v is None else f"{-v:.2f}" for v in rho.values())
            lines.append(f"\nRank correlation with left-out recovery over the {len(trained)} "
                         f"trained models: val loss {by_val}, val KL {by_kl} (1 = the "
                         "criterion orders them exactly as the left-out corpus does).")  # fmt: skip
    if missing:
        lines.append("\nNot re-scored (folder deleted): "
                     + ", ".join(f"{m['name']} {m['bits']}-bit seed {m['seed']}" for m in missing))  # fmt: skip
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="bench_pretrained.py's --work")
    p.add_argument("--data", default="without_sotu", help="the data folder inside --work")
    p.add_argument("--float-dir", type=Path, required=True, help="the teacher")
    p.add_argument("--bits", default="2,3,4")
    p.add_argument("--report", type=Path, required=True, help="the bench's results json")
    p.add_argument("--name", required=True)
    args = p.parse_args()
    reexec_with_openblas()
    import mlx.core as mx

    mx.set_cache_limit(4 << 30)
    work = args.work / args.data
    for need in (work / "bench.json", args.report, args.float_dir / "config.json"):
        if not need.is_file():
            raise SystemExit(f"{need}: not found (--work/--data must be a bench_pretrained.py "
                             "work folder, --report its results json, --float-dir the teacher)")  # fmt: skip
    bench = json.loads((work / "bench.json").read_text())
    batches = split_windows(work / "data", "val", bench["batch_size"], bench["seq_len"],
                            bench["val_batches"])  # fmt: skip
    t0 = time.perf_counter()
    teacher = teacher_logprobs(load_float32(args.float_dir), batches)
    report_json = json.loads(args.report.read_text())
    report = {(r["name"], r["bits"], r["seed"]): r for r in report_json["rows"]
              if r["tokens"] == bench["tokens"] or r["method"] == "rtn"}  # fmt: skip
    rows = []
    for b, seed, name, path in model_dirs(work, [int(x) for x in args.bits.split(",")]):
        r = report.get((name, b, seed))
        if r is None:
            print(f"skip {path}: no row in {args.report}", flush=True)
            continue
        kl = mean_kl(load_float32(path), batches, teacher)
        rows.append({"name": name, "method": r["method"], "bits": b, "seed": seed, "val_kl": kl,
                     **{k: r[k] for k in ("val", "test", "left_out", "test_recovered",
                                          "left_out_recovered")}})  # fmt: skip
        print(f"{b}-bit seed {seed} {name}: val KL {kl:.4f}", flush=True)
        mx.clear_cache()
    held = {(r["name"], r["bits"], r["seed"]) for r in rows}
    missing = [{"name": n, "bits": b, "seed": s} for (n, b, s), r in report.items()
               if (n, b, s) not in held and r["method"] not in ("float", "float_ce")
               and str(b) in args.bits.split(",")]  # fmt: skip
    cmd = shlex.join([Path(sys.executable).name, *sys.argv])
    date = datetime.date.today().isoformat()
    out = {"command": cmd, "date": date, "machine": machine(), "wall_s": time.perf_counter() - t0,
           "val_tokens": sum(b[:, 1:].size for b in batches), "rows": rows, "missing": missing}  # fmt: skip
    (RESULTS / f"{args.name}.json").write_text(json.dumps(out, indent=1) + "\n")
    title = report_json.get("title") or args.report.name
    md = [f"# Validation KL to the teacher: the models of {title}", ""]
    md += header_lines(cmd, date, out["machine"]) + [""]
    md += [f"{out['val_tokens']:,} validation tokens, {len(rows)} models, {out['wall_s']:.0f} s."]
    md += report_lines(rows, missing)
    (RESULTS / f"{args.name}.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
