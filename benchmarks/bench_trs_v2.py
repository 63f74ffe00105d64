"""Benchmark (v2 protocol, issue #27 item 3): TRS against a bracketed cosine LR, as QAT of a
converged float checkpoint — the paper's conditions, not the pretraining anneal of
`bench_trs.py` (whose table, benchmarks/results/trs.md, stays as what happens inside a fused
anneal).

Per seed: one float run (preset d2, vocab 1024, `--fp-tokens`, cosine decay to 0: converged
for its budget), exported as a float mlx-lm dir. Then, per (bits, seed), QAT from it
(`mlx_qat.train --model FP --qat-fraction 1`), `--qat-steps` steps of batch x seq tokens,
learned-affine grid (straight-through, scales at 0.03x LR while they train), the tied
embedding/head kept in float (`--quant-overrides model.embed_tokens=float`: out of TRS
control and unquantized, as the paper keeps its first/last layers), m = 0.99 in both arms:

1. **schedule**: cosine LR over the whole QAT phase (warmup 2%), peak LR in the bracket
   `--lrs` (1e-3, 3e-3); when the validation-best LR (mean over seeds) is at an end, the
   bracket is extended by one point beyond it (x/3 or x*3.33: 3e-4 or 1e-2) and the flag
   `at_edge` says if the best is still the outermost point.
2. **trs**: `lr_control: trs`, U0 = the schedule's chosen LR at that bits (the norms keep a
   cosine at U0), lambda in `--lambdas` (1e-3, 2.5e-3, 5e-3), eta in {U0, 10 U0}.

Each arm's setting is chosen on the validation split (mean over seeds) and reported on the
held-out test split: FP (the float checkpoint), PTQ (its round-to-nearest), QAT loss, share
of the PTQ gap recovered, TRS - schedule per seed. A benchmark never asserts.

    python benchmarks/bench_trs_v2.py --dry-run   # the grid and its estimated cost
    python benchmarks/bench_trs_v2.py             # full: ~2.2 h on 2 cores (see --dry-run)
    python benchmarks/bench_trs_v2.py --micro     # ~30 s smoke run into runs/bench_trs_v2_micro

Writes benchmarks/results/trs_v2.{md,json} (`--micro`: into the runs dir, never the results).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FULL = dict(
    bits=[2, 3], seeds=[0, 1], fp_tokens=2_048_000, qat_steps=1000, batch=8, seq=128,
    lrs=[1e-3, 3e-3], lambdas=[1e-3, 2.5e-3, 5e-3], eta_factors=[1.0, 10.0],
    final_eval_batches=48,
)  # fmt: skip
MICRO = dict(
    bits=[2], seeds=[0], fp_tokens=8_192, qat_steps=12, batch=2, seq=32,
    lrs=[1e-3, 3e-3], lambdas=[1e-3, 5e-3], eta_factors=[1.0], final_eval_batches=2,
)  # fmt: skip
# d2 at batch 8 x 128 on the 2-core CI machine (OpenBLAS): ~6.5k tokens/s, from the 16.6 min of
# benchmarks/results/trs.md (6.5M tokens); QAT steps are slower than FP ones, so 5k for them
TOKENS_PER_S = {"fp": 6500.0, "qat": 5000.0}
EMBED_FLOAT = {"model.embed_tokens": "float"}
EXTEND = (1 / 3, 10 / 3)  # the bracket's extension: below its lowest, above its highest


def extension(lrs: list[float], best: float) -> float | None:
    """The LR that extends the bracket past `best` when `best` is at one of its ends, else
    None (the bracket holds the optimum inside)."""
    lo, hi = min(lrs), max(lrs)
    if len(lrs) < 2:
        return None
    if best == lo:
        return lo * EXTEND[0]
    if best == hi:
        return hi * EXTEND[1]
    return None


def choose(rows: list[dict], arm: str, bits: int, keys: tuple[str, ...]) -> dict | None:
    """The setting of `arm` at `bits` with the lowest validation QAT loss (mean over seeds),
    its test numbers, and for each key whether the chosen value is at the end of the values
    tried (`at_edge`: the optimum may lie outside the bracket).

    Rows: {"arm", "bits", "seed", keys..., "val": {"qat"}, "test": {"qat", "recovered"}}.
    """
    rs = [r for r in rows if r["arm"] == arm and r["bits"] == bits]
    if not rs:
        return None
    settings = sorted({tuple(r[k] for k in keys) for r in rs})
    mean_val = {
        s: statistics.fmean(r["val"]["qat"] for r in rs if tuple(r[k] for k in keys) == s)
        for s in settings
    }
    best = min(settings, key=lambda s: mean_val[s])
    picked = [r for r in rs if tuple(r[k] for k in keys) == best]
    edge = {}
    for i, k in enumerate(keys):
        values = sorted({s[i] for s in settings})
        edge[k] = len(values) > 1 and best[i] in (values[0], values[-1])
    return {
        "setting": dict(zip(keys, best)),
        "val": mean_val[best],
        "val_by_setting": {"/".join(f"{v:g}" for v in s): mean_val[s] for s in settings},
        "test": {r["seed"]: r["test"]["qat"] for r in picked},
        "test_recovered": {r["seed"]: r["test"]["recovered"] for r in picked},
        "at_edge": edge,
    }


def plan(args) -> dict:
    """The runs and their estimated cost on 2 cores (the extension runs counted as one per
    (bits, seed), which is the most there can be)."""
    tps = args.batch * args.seq
    qat_tokens = args.qat_steps * tps
    n_sched = len(args.lrs) + 1
    n_trs = len(args.lambdas) * len(args.eta_factors)
    n_qat = len(args.bits) * len(args.seeds) * (n_sched + n_trs)
    secs = len(args.seeds) * args.fp_tokens / TOKENS_PER_S["fp"]
    secs += n_qat * qat_tokens / TOKENS_PER_S["qat"]
    return {
        "fp_runs": len(args.seeds),
        "qat_runs_max": n_qat,
        "qat_tokens_per_run": qat_tokens,
        "tokens_total": len(args.seeds) * args.fp_tokens + n_qat * qat_tokens,
        "est_seconds_2_cores": secs,
    }


def _cfg(args, out: Path, seed: int, **kw):
    from mlx_qat.train.config import TrainConfig

    base = dict(
        out=str(out), data=[str(args.data)], preset="d2", batch_size=args.batch,
        seq_len=args.seq, seed=seed, cooldown_shape="cosine", eval_every=0, eval_batches=4,
        final_eval_batches=args.final_eval_batches, save_every=0, keep_checkpoints=1,
        quiet=True, cache_limit_mb=1024, overwrite=True,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


def fp_model(args, seed: int) -> Path:
    """The converged float checkpoint of `seed`, as a float mlx-lm dir (reused if present)."""
    from mlx_qat.convert import convert
    from mlx_qat.train import train

    run, mlx_dir = args.runs / f"fp_s{seed}", args.runs / f"fp_s{seed}_mlx"
    if (mlx_dir / "config.json").is_file():
        return mlx_dir
    cfg = _cfg(args, run, seed, tokens=args.fp_tokens, qat_fraction="0", lr=args.fp_lr,
               cooldown_fraction=1.0)  # fmt: skip
    train(cfg)
    convert(str(run), str(mlx_dir), dequantize=True, dtype="float32", force=True)
    return mlx_dir


def done_rows(runs: Path) -> dict[str, dict]:
    """The rows already finished in `runs` (rows.jsonl, one per QAT run), by run dir: a cut
    benchmark resumes where it stopped (a torn last line is skipped: that run trains again)."""
    from mlx_qat.fileio import read_rows

    path = runs / "rows.jsonl"
    return {r["dir"]: r for r in read_rows(path)} if path.is_file() else {}


def qat_run(args, fp: Path, bits: int, seed: int, arm: str, lr: float, **trs) -> dict:
    """One QAT run from the float model; its row (val and test: FP, PTQ, QAT, recovered),
    appended to runs/rows.jsonl (or read from it when that run already finished)."""
    from mlx_qat.train import train

    tag = f"{arm}_lr{lr:g}" + "".join(f"_{k}{v:g}" for k, v in trs.items())
    out = args.runs / f"b{bits}_s{seed}" / tag
    done = done_rows(args.runs).get(str(out))
    if done is not None:
        return done
    kw = dict(
        model=str(fp), tokens=args.qat_steps * args.batch * args.seq, qat_fraction="1",
        bits=bits, quantizer="learned_affine", scale_grad="ste", quantizer_lr_scale=0.03,
        weight_decay=0.0, lr=lr, cooldown_fraction=1.0, trs_momentum=0.99,
        quant_overrides=dict(EMBED_FLOAT),
    )  # fmt: skip
    if arm == "trs":
        kw.update(lr_control="trs", trs_u0=lr, trs_lambda=trs["lam"], trs_eta=trs["eta"])
    t0 = time.perf_counter()
    res = train(_cfg(args, out, seed, **kw))
    row = {"arm": arm, "bits": bits, "seed": seed, "lr": lr, **trs, "dir": str(out)}
    for split, key in (("val", "eval"), ("test", "test")):
        fp_loss = res["pretrained"][split]["teacher"]["loss"]
        ptq = res["pretrained"][split]["rtn"]["loss"]
        q = res[key]["qat"]["loss"]
        gap = ptq - fp_loss
        rec = (ptq - q) / gap if gap > 1e-9 else None
        row[split] = {"fp": fp_loss, "ptq": ptq, "qat": q, "recovered": rec}
    row["wall_s"] = time.perf_counter() - t0
    from mlx_qat.fileio import append_jsonl

    append_jsonl(args.runs / "rows.jsonl", row)
    return row


def run_all(args) -> list[dict]:
    rows: list[dict] = []
    fps = {s: fp_model(args, s) for s in args.seeds}
    for bits in args.bits:
        lrs = list(args.lrs)
        for lr in lrs:
            rows += [qat_run(args, fps[s], bits, s, "schedule", lr) for s in args.seeds]
        best = choose(rows, "schedule", bits, ("lr",))["setting"]["lr"]
        ext = extension(lrs, best)
        if ext is not None:
            rows += [qat_run(args, fps[s], bits, s, "schedule", ext) for s in args.seeds]
        u0 = choose(rows, "schedule", bits, ("lr",))["setting"]["lr"]
        for lam in args.lambdas:
            for ef in args.eta_factors:
                for s in args.seeds:
                    rows.append(qat_run(args, fps[s], bits, s, "trs", u0, lam=lam, eta=ef * u0))
                    print(f"bits {bits} seed {s} trs lam {lam:g} eta {ef:g}U0: "
                          f"val {rows[-1]['val']['qat']:.4f}", flush=True)  # fmt: skip
    return rows


def summarize(rows: list[dict]) -> dict:
    out = {}
    for bits in sorted({r["bits"] for r in rows}):
        s = choose(rows, "schedule", bits, ("lr",))
        t = choose(rows, "trs", bits, ("lam", "eta"))
        one = next(r for r in rows if r["bits"] == bits)
        per_seed = {}
        if s and t:
            per_seed = {k: t["test"][k] - s["test"][k] for k in s["test"] if k in t["test"]}
        out[bits] = {
            "fp_test": {r["seed"]: r["test"]["fp"] for r in rows if r["bits"] == bits},
            "ptq_test": {r["seed"]: r["test"]["ptq"] for r in rows if r["bits"] == bits},
            "schedule": s,
            "trs": t,
            "trs_minus_schedule_test": per_seed,
            "trs_better_all_seeds": bool(per_seed) and all(v < 0 for v in per_seed.values()),
            "example_dir": one["dir"],
        }
    return out


def render(payload: dict) -> str:
    from benchmarks.common import header_lines

    a = payload["args"]
    md = ["# TRS vs a bracketed cosine LR: QAT of a converged float checkpoint (v2)", ""]
    md += header_lines(payload["command"], payload["date"], payload["machine"])
    md += [
        "",
        f"Setup: d2, float run of {a['fp_tokens']:,} tokens (cosine to 0), then QAT "
        f"{a['qat_steps']} steps of {a['batch']}x{a['seq']} from it; learned-affine grid, "
        "embedding/head in float, m = 0.99; schedule LRs tried and TRS (lambda, eta) tried "
        "below; seeds " + str(a["seeds"]) + f"; wall {payload['wall_s'] / 60:.1f} min. "
        "Chosen on validation (mean over seeds), reported on test.",
        "",
        "| bits | schedule LR (edge?) | TRS lambda / eta (edge?) | schedule test | TRS test | "
        "TRS - schedule per seed | recovered: schedule / TRS |",
        "|---|---|---|---|---|---|---|",
    ]
    for b, s in payload["summary"].items():
        sc, tr = s["schedule"], s["trs"]
        if not sc or not tr:
            continue

        def mean(d):
            v = [x for x in d.values() if x is not None]
            return statistics.fmean(v) if v else float("nan")

        md.append(
            f"| {b} | {sc['setting']['lr']:g} ({sc['at_edge']['lr']}) | "
            f"{tr['setting']['lam']:g} / {tr['setting']['eta']:g} "
            f"({tr['at_edge']['lam']}/{tr['at_edge']['eta']}) | {mean(sc['test']):.4f} | "
            f"{mean(tr['test']):.4f} | "
            + ", ".join(f"{v:+.4f}" for v in s["trs_minus_schedule_test"].values())
            + f" | {100 * mean(sc['test_recovered']):.1f}% / "
            f"{100 * mean(tr['test_recovered']):.1f}% |"
        )
    md += ["", "Validation loss of every setting (mean over seeds): see trs_v2.json.", ""]
    return "\n".join(md)


def main(argv: list[str] | None = None) -> None:
    from mlx_qat.blas import reexec_with_openblas

    reexec_with_openblas()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--micro", action="store_true", help="tiny budget, into the runs dir")
    p.add_argument("--dry-run", action="store_true", help="print the grid and its cost")
    p.add_argument("--data", type=Path, default=ROOT / "data")
    p.add_argument("--runs", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--bits", type=int, nargs="+")
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--fp-tokens", type=int)
    p.add_argument("--qat-steps", "--steps", type=int, dest="qat_steps")
    p.add_argument("--batch", type=int)
    p.add_argument("--seq", type=int)
    p.add_argument("--lrs", type=float, nargs="+")
    p.add_argument("--lambdas", type=float, nargs="+")
    p.add_argument("--eta-factors", type=float, nargs="+")
    p.add_argument("--final-eval-batches", type=int)
    p.add_argument("--fp-lr", type=float, default=3e-3)
    args = p.parse_args(argv)
    for k, v in (MICRO if args.micro else FULL).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    name = "bench_trs_v2_micro" if args.micro else "bench_trs_v2"
    args.runs = args.runs or ROOT / "runs" / name
    out = args.out or (args.runs if args.micro else ROOT / "benchmarks" / "results")
    cost = plan(args)
    if args.dry_run:
        print(json.dumps(cost, indent=2))
        print(f"estimated: {cost['est_seconds_2_cores'] / 3600:.2f} h on 2 cores")
        return
    if not (args.data / "latest.json").is_file() and not (args.data / "manifest.json").is_file():
        sys.exit(f"--data {args.data}: no prepared data (python -m mlx_qat data --out data "
                 "--vocab-size 1024)")  # fmt: skip
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from benchmarks.common import run_record

    t0 = time.perf_counter()
    rows = run_all(args)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        **run_record(__file__, sys.argv[1:], args),
        "cost_estimate": cost,
        "rows": rows,
        "summary": summarize(rows),
        "wall_s": time.perf_counter() - t0,
    }
    (out / "trs_v2.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    (out / "trs_v2.md").write_text(render(payload))
    print(render(payload))


if __name__ == "__main__":
    main()
