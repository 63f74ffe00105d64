"""Benchmark (issue #27 item 4): does `mlx_qat.diagnose` predict what QAT then does?

For each model (presets d2 and d4 trained here as float runs, cosine to 0, exported float;
SmolLM2-135M from `--smollm DIR`, a float32 mlx-lm dir, with `--smollm-data`, data prepared
with its tokenizer: `python -m mlx_qat data --tokenizer DIR --out D`; skipped when absent) at
each bit width (2, 3, 4, 8; affine, group 64):

* `diagnose` on the float model (validation batches): the PTQ gap, κ̂ (line scan), the scan's
  wall slope and the random-direction radius;
* QAT from the float model at a fixed budget (`--qat-steps` of batch x seq, learned-affine
  grid, cosine LR at `--qat-lr`): the share of the PTQ gap it recovers on validation,
  (PTQ - QAT) / (PTQ - FP), with the trainer's own FP and PTQ losses.

Then the Spearman rank correlation of each measure with the recovered share over all
(model, bits) points, next to the gap's own: a basin measure earns its keep only where it
beats the gap alone. A benchmark never asserts.

    python benchmarks/bench_diagnose_calibration.py --dry-run   # points and estimated cost
    python benchmarks/bench_diagnose_calibration.py --smollm /tmp/bp/float --smollm-data D
    python benchmarks/bench_diagnose_calibration.py --micro     # ~30 s, into the runs dir

Writes benchmarks/results/diagnose_calibration.{md,json,png} (png when matplotlib is there).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MEASURES = ("gap", "kappa_hat", "wall_slope", "radius")
FULL = dict(
    presets=["d2", "d4"], bits=[2, 3, 4, 8], fp_tokens=2_048_000, qat_steps=500, batch=8,
    seq=128, diag_batches=4, eval_batches=16,
)  # fmt: skip
MICRO = dict(
    presets=["d2"], bits=[2, 3, 4], fp_tokens=8_192, qat_steps=8, batch=2, seq=32,
    diag_batches=1, eval_batches=2,
)  # fmt: skip
# 2 cores, OpenBLAS: d2 ~6.5k tokens/s (benchmarks/results/trs.md), d4 about half, QAT ~0.75x;
# SmolLM2-135M ~0.3k tokens/s QAT (an estimate: ~700x d2's parameters, not measured here)
TOKENS_PER_S = {"d2": 6500.0, "d4": 3300.0, "smollm2": 400.0}
DIAG_S = {"d2": 20.0, "d4": 40.0, "smollm2": 400.0}  # one diagnose, cheap settings


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rho with average ranks for ties (None below 3 finite pairs or no spread)."""
    pts = [(a, b) for a, b in zip(x, y) if _ok(a) and _ok(b)]
    if len(pts) < 3:
        return None

    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    a, b = ranks([p[0] for p in pts]), ranks([p[1] for p in pts])
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    num = sum((p - ma) * (q - mb) for p, q in zip(a, b))
    den = math.sqrt(sum((p - ma) ** 2 for p in a) * sum((q - mb) ** 2 for q in b))
    return num / den if den > 0 else None


def _ok(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def correlations(rows: list[dict], target: str = "recovered_net") -> dict:
    """Spearman of each measure with the recovered share (`target`, net of the float
    fine-tune); `beats_gap`: |rho| above the gap's."""
    y = [r[target] for r in rows]
    out = {m: {"spearman": spearman([r[m] for r in rows], y)} for m in MEASURES}
    g = out["gap"]["spearman"]
    for m in MEASURES:
        s = out[m]["spearman"]
        out[m]["n"] = sum(_ok(r[m]) and _ok(r[target]) for r in rows)
        out[m]["beats_gap"] = None if s is None or g is None else abs(s) > abs(g)
    return out


def models(args) -> list[dict]:
    ms = [{"name": p, "preset": p, "data": str(args.data)} for p in args.presets]
    if args.smollm and (Path(args.smollm) / "config.json").is_file() and args.smollm_data:
        ms.append({"name": "smollm2", "dir": str(args.smollm), "data": str(args.smollm_data)})
    return ms


def plan(args) -> dict:
    tps, secs, skipped = args.batch * args.seq, 0.0, []
    ms = models(args)
    if args.smollm and not any(m["name"] == "smollm2" for m in ms):
        skipped.append(f"smollm2: {args.smollm} or --smollm-data missing")
    for m in ms:
        rate = TOKENS_PER_S[m["name"]] if m["name"] in TOKENS_PER_S else TOKENS_PER_S["d4"]
        if "preset" in m:
            secs += args.fp_tokens / rate
        secs += len(args.bits) * (args.qat_steps * tps / (0.75 * rate) + DIAG_S.get(m["name"], 60))
    return {"models": [m["name"] for m in ms], "points": len(ms) * len(args.bits),
            "qat_tokens_per_point": args.qat_steps * tps, "est_seconds_2_cores": secs,
            "skipped": skipped}  # fmt: skip


def _cfg(args, out: Path, data: str, **kw):
    from mlx_qat.train.config import TrainConfig

    base = dict(
        out=str(out), data=[data], batch_size=args.batch, seq_len=args.seq, seed=args.seed,
        cooldown_shape="cosine", cooldown_fraction=1.0, eval_every=0, eval_batches=4,
        final_eval_batches=args.eval_batches, save_every=0, keep_checkpoints=1, quiet=True,
        cache_limit_mb=1024, overwrite=True,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


def float_dir(args, m: dict) -> str:
    """The float mlx-lm dir of model `m` (a preset is trained and exported once)."""
    if "dir" in m:
        return m["dir"]
    from mlx_qat.convert import convert
    from mlx_qat.train import train

    run, out = args.runs / f"fp_{m['name']}", args.runs / f"fp_{m['name']}_mlx"
    if not (out / "config.json").is_file():
        train(_cfg(args, run, m["data"], preset=m["preset"], tokens=args.fp_tokens,
                   qat_fraction="0", lr=3e-3))  # fmt: skip
        convert(str(run), str(out), dequantize=True, dtype="float32", force=True)
    return str(out)


def float_ft(args, m: dict, fdir: str) -> dict:
    """The float model fine-tuned on the QAT runs' tokens with no quantization: its validation
    loss is what the same budget gains without any quantization error to recover."""
    from mlx_qat.train import train

    res = train(_cfg(args, args.runs / f"ft_{m['name']}", m["data"], model=fdir,
                     tokens=args.qat_steps * args.batch * args.seq, qat_fraction="0",
                     lr=args.qat_lr))  # fmt: skip
    return {"model": m["name"], "float_ft": res["eval"]["fp"]["loss"]}


def net(row: dict, ft: dict | None) -> dict:
    """`row` with the float fine-tune's loss and the share of the gap recovered net of it:
    1 − (QAT − float fine-tune) / (PTQ − FP), the quantization error QAT removed (the plain
    share also counts what the extra tokens teach the model, quantized or not)."""
    if not ft:
        return {**row, "float_ft": None, "recovered_net": None}
    gap = row["train_ptq"] - row["train_fp"]
    ok = gap > 1e-9
    return {**row, "float_ft": ft["float_ft"],
            "recovered_net": 1 - (row["qat"] - ft["float_ft"]) / gap if ok else None}  # fmt: skip


def point(args, m: dict, fdir: str, bits: int) -> dict:
    from mlx_qat.diagnose import DiagnoseSettings, diagnose
    from mlx_qat.train import train

    t0 = time.perf_counter()
    st = DiagnoseSettings(attribution="off", random_draws=2, sr_draws=0)
    if args.micro:
        st = DiagnoseSettings(attribution="off", alpha_points=5, random_draws=1, sr_draws=0)
    d = diagnose(fdir, data=m["data"], bits=bits, eval_batches=args.diag_batches,
                 batch_size=args.batch, seq_len=args.seq, settings=st)  # fmt: skip
    res = train(_cfg(args, args.runs / f"qat_{m['name']}_b{bits}", m["data"], model=fdir,
                     tokens=args.qat_steps * args.batch * args.seq, qat_fraction="1",
                     bits=bits, quantizer="learned_affine", lr=args.qat_lr))  # fmt: skip
    pv = res["pretrained"]["val"]
    fp, ptq, q = pv["teacher"]["loss"], pv["rtn"]["loss"], res["eval"]["qat"]["loss"]
    gap = ptq - fp
    return {
        "model": m["name"],
        "bits": bits,
        "gap": d["gap"],
        "kappa_hat": d["scan"]["kappa_hat"],
        "wall_slope": d["scan"]["wall_slope"],
        "radius": (d.get("random") or {}).get("radius"),
        "verdict": d["verdict"]["label"],
        "eps": d["eps"],
        "train_fp": fp,
        "train_ptq": ptq,
        "qat": q,
        "recovered": (ptq - q) / gap if gap > 1e-9 else None,
        "wall_s": time.perf_counter() - t0,
    }


def _f(v, fmt="{:.3f}") -> str:
    return fmt.format(v) if _ok(v) else "-"


def render(p: dict) -> str:
    from benchmarks.common import header_lines

    a = p["args"]
    md = ["# diagnose calibrated on what QAT then recovers", ""]
    md += header_lines(p["command"], p["date"], p["machine"])
    md += [
        "",
        f"Models {p['cost_estimate']['models']}, bits {a['bits']} (affine g64); QAT "
        f"{a['qat_steps']} steps of {a['batch']}x{a['seq']} at LR {a['qat_lr']} (cosine), "
        f"learned-affine grid; recovered = (PTQ - QAT)/(PTQ - FP) on validation; net = "
        f"1 - (QAT - FP fine-tuned)/(PTQ - FP), the FP model fine-tuned on the same tokens "
        f"at the same LR without quantization (what the extra tokens alone give). "
        f"Wall {p['wall_s'] / 60:.1f} min.",
        "",
        "| model | bits | PTQ gap | κ̂ | wall slope | radius | FP / PTQ / QAT / FP "
        "fine-tuned | recovered | net |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in p["rows"]:
        md.append(
            f"| {r['model']} | {r['bits']} | {_f(r['gap'], '{:.4f}')} | {_f(r['kappa_hat'])} | "
            f"{_f(r['wall_slope'])} | {_f(r['radius'])} | "
            f"{_f(r['train_fp'], '{:.4f}')} / {_f(r['train_ptq'], '{:.4f}')} / "
            f"{_f(r['qat'], '{:.4f}')} / {_f(r.get('float_ft'), '{:.4f}')} | "
            f"{_f(r['recovered'] and 100 * r['recovered'], '{:.1f}')}% | "
            f"{_f(r.get('recovered_net') and 100 * r['recovered_net'], '{:.1f}')}% |"
        )
    md += ["", "| measure | Spearman vs net recovered | n | beats the gap |", "|---|---|---|---|"]
    for m, c in p["correlations"].items():
        md.append(f"| {m} | {_f(c['spearman'], '{:+.2f}')} | {c['n']} | {c['beats_gap']} |")
    md += [
        "",
        "The verdict's calibration (`mlx_qat/diagnose/verdict.py`: `CALIBRATION` ="
        " `calibration_points` of these rows: gaps above ε, sorted, adjacent violators pooled):",
        "",
        "| PTQ gap (nats) | share QAT recovered |",
        "|---|---|",
        *(f"| {g:.4f} | {100 * y:.1f}% |" for g, y in p["calibration"]),
    ]
    if p.get("plot"):
        md += ["", f"![measures vs recovered share]({p['plot']})"]
    return "\n".join(md) + "\n"


def plot(rows: list[dict], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, len(MEASURES), figsize=(4 * len(MEASURES), 3.5))
    for ax, m in zip(axes, MEASURES):
        for name in sorted({r["model"] for r in rows}):
            pts = [(r[m], r["recovered_net"]) for r in rows if r["model"] == name]
            pts = [q for q in pts if _ok(q[0]) and _ok(q[1])]
            ax.scatter([q[0] for q in pts], [q[1] for q in pts], label=name)
        ax.set_xlabel(m)
        ax.set_ylabel("share of the PTQ gap QAT recovered (net)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def main(argv: list[str] | None = None) -> None:
    from mlx_qat.blas import reexec_with_openblas

    reexec_with_openblas()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--micro", action="store_true", help="tiny budget, into the runs dir")
    p.add_argument("--dry-run", action="store_true", help="print the points and their cost")
    p.add_argument("--report-only", action="store_true",
                   help="measure nothing: write the report from the runs dir's rows.jsonl")  # fmt: skip
    p.add_argument("--data", type=Path, default=ROOT / "data")
    p.add_argument("--smollm", type=Path, default=Path("/tmp/bp/float"))
    p.add_argument("--smollm-data", type=Path, default=None)
    p.add_argument("--runs", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--presets", nargs="+")
    p.add_argument("--bits", type=int, nargs="+")
    p.add_argument("--fp-tokens", type=int)
    p.add_argument("--qat-steps", "--steps", type=int, dest="qat_steps")
    p.add_argument("--qat-lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int)
    p.add_argument("--seq", type=int)
    p.add_argument("--diag-batches", type=int)
    p.add_argument("--eval-batches", type=int)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for k, v in (MICRO if args.micro else FULL).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.micro:
        args.smollm = None
    name = "bench_diagnose_calibration" + ("_micro" if args.micro else "")
    args.runs = args.runs or ROOT / "runs" / name
    out = args.out or (args.runs if args.micro else ROOT / "benchmarks" / "results")
    cost = plan(args)
    if args.dry_run:
        print(json.dumps(cost, indent=2))
        print(f"estimated: {cost['est_seconds_2_cores'] / 3600:.2f} h on 2 cores")
        return
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from benchmarks.common import run_record
    from mlx_qat.diagnose.verdict import calibration_points
    from mlx_qat.fileio import append_jsonl, read_rows

    # Each point is saved as it finishes and skipped on a rerun: a run of hours survives a stop.
    t0, done = time.perf_counter(), args.runs / "rows.jsonl"
    saved = {(r["model"], r["bits"]): r for r in read_rows(done)} if done.is_file() else {}
    rows = list(saved.values()) if args.report_only else []
    ft_file = args.runs / "float_ft.jsonl"
    fts = {r["model"]: r for r in read_rows(ft_file)} if ft_file.is_file() else {}
    for m in [] if args.report_only else models(args):
        fdir = float_dir(args, m)
        if m["name"] not in fts:
            fts[m["name"]] = float_ft(args, m, fdir)
            append_jsonl(ft_file, fts[m["name"]])
        for bits in args.bits:
            if (m["name"], bits) in saved:
                rows.append(saved[(m["name"], bits)])
                continue
            rows.append(point(args, m, fdir, bits))
            append_jsonl(done, rows[-1])
            r = rows[-1]
            print(f"{m['name']} {bits}-bit: gap {r['gap']:.4f}, kappa {_f(r['kappa_hat'])}, "
                  f"recovered {_f(r['recovered'])}", flush=True)  # fmt: skip
    rows = [net(r, fts.get(r["model"])) for r in rows]
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        **run_record(__file__, sys.argv[1:], args),
        "cost_estimate": cost,
        "rows": rows,
        "correlations": correlations(rows),
        "calibration": calibration_points(rows),
        "plot": plot(rows, out / "diagnose_calibration.png"),
        "wall_s": time.perf_counter() - t0,
    }
    before = out / "diagnose_calibration.json"
    if args.report_only and before.is_file():  # the measuring run's wall, not this rewrite's
        payload["wall_s"] = json.loads(before.read_text()).get("wall_s", payload["wall_s"])
    (out / "diagnose_calibration.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / "diagnose_calibration.md").write_text(render(payload))
    print(render(payload))


if __name__ == "__main__":
    main()
