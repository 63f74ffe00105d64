"""Benchmark: transition-rate scheduling (`lr_control: trs`) against the LR schedule, at equal
tokens, at 2, 3 and 4 bits, several seeds; and the loss-basin diagnosis of the float model.

For each (bits, seed), on the main job's data and model (`data/`, preset d2, vocab 1024;
learned-affine quantizer, fused pipeline, 1-sqrt cooldown, a fixed QAT fraction):

1. **schedule**: `mlx_qat.train` with `--fp-twin`: FP phase, switch, QAT phase at the
   scheduled LR (quantizer scales trained at 0.03x), then the FP twin (the QAT phase again
   with fake quant off): the float model of the same budget (FP) and its round-to-nearest
   PTQ, the baseline of both arms.
2. **trs**: branched from the schedule run's switch checkpoint (same FP phase, same data
   order), the QAT phase with `lr_control: trs` (U0 = eta = the peak LR, lambda = 5e-3,
   m = 0.95 here, see `--momentum`; scales frozen at their switch values).

Reported on the held-out test split (nothing here is tuned on it; validation beside it): FP,
PTQ, each arm's QAT loss, % of the PTQ gap recovered = (PTQ − QAT)/(PTQ − FP), mean ± sample
standard deviation (and min..max) over seeds, the TRS − schedule difference per seed; the
mean transition rate of each arm's QAT phase and U at the end relative to U0. Then
`mlx_qat.diagnose` (line scan, random directions, stochastic rounding, block attribution) on
each twin's final checkpoint at its bits, and at 8 bits on the 4-bit twin: κ̂ and the verdict
next to the measured PTQ gap — and the paper-B hypothesis that TRS helps more where κ̂ is
larger (larger κ̂: the PTQ point further outside the basin).

A benchmark never asserts. Writes benchmarks/results/trs.{md,json,png} (`--quick`: a smoke test
of the whole pipeline on a tiny budget, into runs/bench_trs_quick/, never the results).

    python benchmarks/bench_trs.py            # the full run: ~18 min on 2 cores (OpenBLAS)
    python benchmarks/bench_trs.py --quick    # ~30 s
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_diagnose_calibration import spearman  # noqa: E402 (ties get average ranks)

FULL = dict(
    bits=[2, 3, 4], seeds=[0, 1, 2], tokens=400_000, fraction=0.4, batch=8, seq=128,
    final_eval_batches=48, diag_batches=4,
)  # fmt: skip
QUICK = dict(
    bits=[2, 4], seeds=[0], tokens=40_000, fraction=0.5, batch=4, seq=64,
    final_eval_batches=4, diag_batches=1,
)  # fmt: skip


def train_config(args, bits: int, seed: int, out: Path, **kw):
    from mlx_qat.train.config import TrainConfig

    base = dict(
        out=str(out), data=[str(args.data)], preset="d2", tokens=args.tokens, bits=bits,
        qat_fraction=args.fraction, quantizer=args.quantizer, pipeline="fused",
        cooldown_shape="1-sqrt", cooldown_fraction=0.2, lr=args.lr, batch_size=args.batch,
        seq_len=args.seq, seed=seed, eval_every=0, eval_batches=4,
        final_eval_batches=args.final_eval_batches, save_every=0, keep_checkpoints=1,
        quiet=True, cache_limit_mb=1024,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


def _start(cfg):
    """Continue a run of the same settings that has checkpoints (a finished one is a no-op),
    else start afresh (a run of other settings in that directory is replaced)."""
    from dataclasses import replace

    from mlx_qat.checkpoint import list_checkpoints
    from mlx_qat.train.config import load_config

    saved = Path(cfg.out) / "config.yaml"
    same = saved.is_file() and load_config(saved).hash() == cfg.hash()
    if same and list_checkpoints(cfg.out):
        return replace(cfg, resume=True, branch_from=None, overwrite=False)
    return replace(cfg, overwrite=Path(cfg.out).exists())


def run_pair(args, bits: int, seed: int) -> dict:
    """The schedule run (+ FP twin) and the TRS branch of one (bits, seed)."""
    from mlx_qat.checkpoint import CHECKPOINTS, step_dir_name
    from mlx_qat.train import train
    from mlx_qat.train.metrics import read_metrics

    root = args.runs / f"b{bits}_s{seed}"
    t0 = time.perf_counter()
    # the same EMA momentum in both arms, so their logged K compare (it steers only TRS)
    mom = dict(trs_momentum=args.momentum)
    sched_cfg = train_config(args, bits, seed, root / "schedule", fp_twin=True, **mom)
    sched = train(_start(sched_cfg))
    fp_steps = sched["plan"]["fp_steps"]
    switch = root / "schedule" / CHECKPOINTS / step_dir_name(fp_steps)
    trs_kw = dict(lr_control="trs", trs_lambda=args.trs_lambda, trs_eta=args.eta, **mom)
    trs_cfg = train_config(args, bits, seed, root / "trs", branch_from=str(switch), **trs_kw)
    trs = train(_start(trs_cfg))
    twin = sched["twin"]
    row = {"bits": bits, "seed": seed, "plan": sched["plan"], "wall_s": time.perf_counter() - t0}
    for split, key in (("test", "test"), ("val", "eval")):
        fp, ptq = twin[key]["fp"]["loss"], twin[key]["ptq"]["loss"]
        r = {"fp": fp, "ptq": ptq, "ptq_gap": ptq - fp}
        for arm, res in (("schedule", sched), ("trs", trs)):
            q = res[key]["qat"]["loss"]
            r[arm] = q
            r[f"{arm}_recovered"] = (ptq - q) / (ptq - fp) if ptq - fp > 1e-9 else None
        row[split] = r
    for arm in ("schedule", "trs"):
        recs = [r for r in read_metrics(root / arm, "train") if r["phase"] == "qat"]
        row[f"{arm}_transitions"] = {
            "mean_rate": statistics.fmean(r["transition_rate"] for r in recs),
            "final_ema": recs[-1]["transition_rate_ema"],
            "final_distance": recs[-1]["transition_distance"],
            **({"u_end_over_u0": recs[-1]["trs_u"] / recs[0]["trs_u"]} if arm == "trs" else {}),
        }
    row["twin_dir"] = str(root / "schedule" / "fp_twin")
    return row


def run_diagnose(args, twin_dir: str, bits: int) -> dict:
    from mlx_qat.diagnose import DiagnoseSettings, diagnose

    st = DiagnoseSettings(attribution="block", random_draws=2, sr_draws=4)
    if args.quick:
        st = DiagnoseSettings(attribution="off", alpha_points=5, random_draws=1, sr_draws=1)
    d = diagnose(twin_dir, data=str(args.data), bits=bits, eval_batches=args.diag_batches,
                 settings=st)  # fmt: skip
    return {
        "bits": bits,
        "twin": twin_dir,
        "kappa_hat": d["scan"]["kappa_hat"],
        "gap": d["gap"],
        "eps": d["eps"],
        "verdict": d["verdict"]["label"],
    }


def _stats(values: list[float]) -> dict:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0}
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    return {"mean": statistics.fmean(v), "sd": sd, "min": min(v), "max": max(v), "n": len(v)}


def summarize(rows: list[dict], diags: list[dict]) -> dict:
    """Per bits: mean ± sd over seeds; κ̂ per bits; the hypothesis check."""
    out = {}
    for b in sorted({r["bits"] for r in rows}):
        rs = [r for r in rows if r["bits"] == b]
        t = [r["test"] for r in rs]
        out[b] = {
            k: _stats([x[k] for x in t])
            for k in (
                "fp",
                "ptq",
                "ptq_gap",
                "schedule",
                "trs",
                "schedule_recovered",
                "trs_recovered",
            )  # fmt: skip
        }
        out[b]["delta_loss"] = _stats([x["trs"] - x["schedule"] for x in t])
        out[b]["delta_recovered"] = _stats(
            [(x["trs_recovered"] or 0) - (x["schedule_recovered"] or 0) for x in t]
        )
        out[b]["kappa_hat"] = _stats([d["kappa_hat"] for d in diags if d["bits"] == b])
        out[b]["verdicts"] = sorted({d["verdict"] for d in diags if d["bits"] == b})
    # does TRS help more where κ̂ is larger? Spearman rank correlation over the (bits, seed)
    # points that have both (benefit = the loss TRS saves over the schedule)
    pts = []
    for r in rows:
        k = [d["kappa_hat"] for d in diags if d["bits"] == r["bits"] and d["twin"] == r["twin_dir"]]
        if k and k[0] is not None and math.isfinite(k[0]):
            pts.append((k[0], r["test"]["schedule"] - r["test"]["trs"]))
    return {
        "per_bits": out,
        "hypothesis": {
            "points": pts,
            "spearman": spearman([p[0] for p in pts], [p[1] for p in pts]),
        },
    }


def plot(args, bits: int, seed: int, path: Path) -> None:
    """Transition rate (both arms), TRS's K and target R, and U vs the schedule's LR, over the
    QAT phase of one (bits, seed)."""
    from mlx_qat.train.metrics import read_metrics
    from mlx_qat.train.plot import pyplot

    plt = pyplot()
    root = args.runs / f"b{bits}_s{seed}"
    s = [r for r in read_metrics(root / "schedule", "train") if r["phase"] == "qat"]
    t = [r for r in read_metrics(root / "trs", "train") if r["phase"] == "qat"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    x0 = s[0]["step"] - 1
    xs, xt = [r["step"] - x0 for r in s], [r["step"] - x0 for r in t]
    a.plot(xs, [r["transition_rate"] for r in s], color="tab:blue", lw=0.6, alpha=0.5)
    a.plot(xs, [r["transition_rate_ema"] for r in s], color="tab:blue", label="schedule: EMA K")
    a.plot(xt, [r["transition_rate"] for r in t], color="tab:red", lw=0.6, alpha=0.5)
    a.plot(xt, [r["transition_rate_ema"] for r in t], color="tab:red", label="TRS: EMA K")
    a.plot(xt, [r["trs_target"] for r in t], "--", color="k", lw=1, label="TRS target R")
    a.set_yscale("log")
    a.set_xlabel("QAT step")
    a.set_ylabel("fraction of codes changed per step")
    a.set_title(f"transition rate ({bits}-bit, seed {seed}; thin: per step)")
    a.legend(fontsize=8)
    b.plot(xs, [r["lr"] for r in s], color="tab:blue", label="schedule LR")
    b.plot(xt, [r["trs_u"] for r in t], color="tab:red", label="TRS U (quantized weights)")
    b.set_xlabel("QAT step")
    b.set_ylabel("learning rate")
    b.set_title("learning rate of the quantized weights")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pm(s: dict, fmt: str = "{:.4f}", scale: float = 1.0) -> str:
    if s["mean"] is None:
        return "-"
    m, sd = s["mean"] * scale, s["sd"] * scale
    return f"{fmt.format(m)} ± {fmt.replace('+', '').format(sd)}"


def render(payload: dict) -> str:
    from benchmarks.common import header_lines

    a, summ = payload["args"], payload["summary"]
    md = ["# Transition-rate scheduling (TRS) vs the LR schedule", ""]
    md += header_lines(payload["command"], payload["date"], payload["machine"])
    md += [
        "",
        f"Setup: preset d2 (vocab 1024), data `{a['data']}`, {a['tokens']:,} tokens per run, "
        f"QAT fraction {a['fraction']}, batch {a['batch']} x {a['seq']}, {a['quantizer']} "
        f"quantizer, fused pipeline (1-sqrt cooldown over 20%), peak LR {a['lr']}; TRS: "
        f"lambda {a['trs_lambda']}, m {a['momentum']}, U0 = the LR at the switch, eta = "
        f"{a['eta'] or 'U0'}, "
        "global U, scales frozen. Seeds "
        f"{a['seeds']}; wall time {payload['wall_s'] / 60:.1f} min.",
        "",
        "Test split (held out); mean ± sample sd over seeds. FP and PTQ are the schedule run's "
        "FP twin (shared by both arms: TRS branches from the same switch checkpoint).",
        "",
        "| bits | FP | PTQ | schedule QAT | TRS QAT | TRS − schedule | gap recovered: schedule "
        "| gap recovered: TRS | κ̂ (diagnose) | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b, s in summ["per_bits"].items():
        md.append(
            f"| {b} | {_pm(s['fp'])} | {_pm(s['ptq'])} | {_pm(s['schedule'])} | "
            f"{_pm(s['trs'])} | {_pm(s['delta_loss'], '{:+.4f}')} | "
            f"{_pm(s['schedule_recovered'], '{:.1f}', 100)}% | "
            f"{_pm(s['trs_recovered'], '{:.1f}', 100)}% | {_pm(s['kappa_hat'], '{:.2f}')} | "
            f"{', '.join(s['verdicts']) or '-'} |"
        )
    md += ["", "Per run (test split; val in trs.json):", ""]
    md += [
        "| bits | seed | PTQ gap | schedule QAT | TRS QAT | rate: schedule | rate: TRS | "
        "U end / U0 | distance: schedule / TRS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["rows"]:
        ts, tt = r["schedule_transitions"], r["trs_transitions"]
        md.append(
            f"| {r['bits']} | {r['seed']} | {r['test']['ptq_gap']:.4f} | "
            f"{r['test']['schedule']:.4f} | {r['test']['trs']:.4f} | {ts['mean_rate']:.4f} | "
            f"{tt['mean_rate']:.4f} | {tt['u_end_over_u0']:.3f} | "
            f"{ts['final_distance']:.3f} / {tt['final_distance']:.3f} |"
        )
    md += ["", "Diagnose (mlx_qat.diagnose on the FP twin's final checkpoint):", ""]
    md += [
        "| bits | twin | κ̂ | PTQ gap (diagnose, val) | ε | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for d in payload["diagnose"]:
        k = f"{d['kappa_hat']:.2f}" if d["kappa_hat"] is not None else "-"
        md.append(
            f"| {d['bits']} | {Path(d['twin']).parent.parent.name} | {k} | {d['gap']:.4f} | "
            f"{d['eps']:.4f} | {d['verdict']} |"
        )
    h = summ["hypothesis"]
    rho = "n/a" if h["spearman"] is None else f"{h['spearman']:+.2f}"
    md += [
        "",
        "Paper B's hypothesis, does TRS help more where κ̂ is larger: Spearman rank correlation "
        f"between κ̂ and the loss TRS saves over the schedule, over {len(h['points'])} "
        f"(bits, seed) points: **{rho}** (+1: the larger κ̂, the more TRS helps).",
        "",
        f"![transition rate and U over the QAT phase]({payload['plot']})",
        "",
    ]
    return "\n".join(md)


def main(argv: list[str] | None = None) -> None:
    from mlx_qat.blas import reexec_with_openblas

    reexec_with_openblas()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke test on a tiny budget")
    p.add_argument("--data", type=Path, default=ROOT / "data")
    p.add_argument("--runs", type=Path, default=None, help="run directories (default runs/...)")
    p.add_argument("--out", type=Path, default=None, help="results dir (default: see header)")
    p.add_argument("--bits", type=int, nargs="+")
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--tokens", type=int)
    p.add_argument("--fraction", type=float)
    p.add_argument("--batch", type=int)
    p.add_argument("--seq", type=int)
    p.add_argument("--final-eval-batches", type=int)
    p.add_argument("--diag-batches", type=int)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--quantizer", default="learned_affine")
    p.add_argument("--trs-lambda", type=float, default=5e-3)
    # 0.95 (a 20-step EMA, 13% of the 156 QAT steps) rather than the library's 0.99: the paper's
    # 100-step window is < 1% of its 80k-600k iterations; a 100-step lag here would leave the
    # controller reacting to the first two thirds of the phase only
    p.add_argument("--momentum", type=float, default=0.95)
    p.add_argument("--eta", type=float, default=None, help="TRS gain (default: U0)")
    args = p.parse_args(argv)
    for k, v in (QUICK if args.quick else FULL).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    name = "bench_trs_quick" if args.quick else "bench_trs"
    args.runs = args.runs or ROOT / "runs" / name
    out = args.out or (ROOT / "runs" / name if args.quick else ROOT / "benchmarks" / "results")
    if not (args.data / "latest.json").is_file() and not (args.data / "manifest.json").is_file():
        sys.exit(
            f"--data {args.data}: no prepared data; prepare the main job's with "
            "`python -m mlx_qat data --out data --vocab-size 1024` (or pass --data DIR)"
        )
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # a twin's final checkpoint is labelled QAT phase (its QAT phase ran with fake quant off):
    # its weights are the float model, which is what is diagnosed; the warning says otherwise
    logging.getLogger("mlx_qat.diagnose.source").setLevel(logging.ERROR)
    from benchmarks.common import run_record

    t0 = time.perf_counter()
    rows, diags = [], []
    for bits in args.bits:
        for seed in args.seeds:
            row = run_pair(args, bits, seed)
            rows.append(row)
            print(
                f"bits {bits} seed {seed}: PTQ gap {row['test']['ptq_gap']:.4f}, schedule "
                f"{row['test']['schedule']:.4f}, TRS {row['test']['trs']:.4f} "
                f"({row['wall_s']:.0f} s)",
                flush=True,
            )
            diags.append(run_diagnose(args, row["twin_dir"], bits))
    top = max(args.bits)
    for seed in args.seeds:  # 8 bits on the widest run's twin: where PTQ should be fine
        twin = next(r["twin_dir"] for r in rows if r["bits"] == top and r["seed"] == seed)
        diags.append(run_diagnose(args, twin, 8))
    out.mkdir(parents=True, exist_ok=True)
    png = out / ("trs_quick.png" if args.quick else "trs.png")
    plot(args, min(args.bits), args.seeds[0], png)
    payload = {
        **run_record(__file__, sys.argv[1:], args),
        "rows": rows,
        "diagnose": diags,
        "summary": summarize(rows, diags),
        "plot": png.name,
        "wall_s": time.perf_counter() - t0,
    }
    stem = "trs_quick" if args.quick else "trs"
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    (out / f"{stem}.md").write_text(render(payload))
    print(render(payload))


if __name__ == "__main__":
    main()
