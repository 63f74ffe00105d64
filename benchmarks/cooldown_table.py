"""Does the optimal QAT fraction follow the LR decay? (issue #27 item 1, second cooldown length)

sweep_tiny_v2 held the decay at the last 20% of the steps (`cooldown_mode: fixed`), and every
2-bit optimum sat at f = 0.2, where the decay starts. This script reads that sweep's rows and
those of the same 2-bit groups run with the decay at 10% and 30%, and prints per (cooldown, N,
D, bits) the loss at each fraction, f* of the loss and of the QAT penalty (L_QAT - L_FP of the
float twin on the same schedule: `mlx_qat.fit.optima.twin_optima`), and the decay's start.
If f* moves with the decay, "start QAT with the decay" is the rule; if it stays, the fraction
is QAT's own. A benchmark report: it never asserts.

    python benchmarks/cooldown_table.py 0.1=A/results.jsonl 0.2=B/results.jsonl \
        0.3=C/results.jsonl --bits 2 --tokens 6e5 --out DIR   # DIR/cooldown.{md,json}
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rows_of(path: Path, bits: int, tokens: float) -> list[dict]:
    """The fused rows of `path` at `bits` and `tokens` (D to 3 significant digits), with the
    FP anchor of each size (f = 0) kept for the table."""
    from mlx_qat.fileio import read_rows

    out = []
    for r in read_rows(path):
        if r.get("pipeline", "fused") != "fused" or f"{r['D']:.3g}" != f"{tokens:.3g}":
            continue
        if r.get("bits") == bits or (r.get("bits") is None and r.get("ptq_bits") == bits):
            out.append(r)
    return out


def table(runs: dict[float, list[dict]]) -> list[dict]:
    """One entry per (cooldown, N): losses by f, and the optima of loss and penalty."""
    from mlx_qat.fit.optima import twin_optima

    out = []
    for cd, rows in sorted(runs.items()):
        optima = {o["N"]: o for o in twin_optima(rows)}
        for n in sorted({r["N"] for r in rows}):
            mine = sorted((r for r in rows if r["N"] == n and r["f"] > 0), key=lambda r: r["f"])
            o = optima.get(float(f"{n:.9g}"))
            if o is None:
                continue
            out.append({
                "cooldown": cd, "N": n, "D": mine[0]["D"], "bits": mine[0]["bits"],
                "loss_by_f": {round(r["f"], 3): r["final_loss"] for r in mine},
                "penalty_by_f": {round(r["f"], 3): r["qat_penalty"] for r in mine},
                "test_by_f": {round(r["f"], 3): r["test_loss"] for r in mine},
                **{k: o[k] for k in ("f_loss_argmin", "f_loss_vertex", "f_loss_at_edge",
                                     "f_penalty_argmin", "f_penalty_vertex",
                                     "f_penalty_at_edge", "fp_twin_spread")},
            })  # fmt: skip
    return out


def markdown(entries: list[dict]) -> str:
    lines = ["| decay (last x of steps) | N | D | bits | loss at f = ... | f* loss: argmin / "
             "vertex | f* penalty: argmin / vertex |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for e in entries:
        losses = " ".join(f"{f:g}:{v:.4f}" for f, v in e["loss_by_f"].items())
        edge = lambda at: " (edge)" if at else ""  # noqa: E731
        lines.append(
            f"| {e['cooldown']:g} | {e['N'] / 1e3:.1f}k | {e['D'] / 1e6:.1f}M | {e['bits']} | "
            f"{losses} | **{e['f_loss_argmin']:.3g}** / {e['f_loss_vertex']:.3g}"
            f"{edge(e['f_loss_at_edge'])} | {e['f_penalty_argmin']:.3g} / "
            f"{e['f_penalty_vertex']:.3g}{edge(e['f_penalty_at_edge'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", metavar="COOLDOWN=RESULTS.jsonl")
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--tokens", type=float, default=6e5)
    p.add_argument("--out", type=Path, default=None, help="write cooldown.{md,json} here")
    args = p.parse_args(argv)
    runs = {}
    for spec in args.runs:
        cd, _, path = spec.partition("=")
        try:
            if not Path(path).is_file():
                raise OSError(f"no file {path!r}")
            runs[float(cd)] = rows_of(Path(path), args.bits, args.tokens)
        except (ValueError, OSError) as e:
            p.error(f"{spec!r}: expected COOLDOWN=RESULTS.jsonl with a readable file ({e})")
    entries = table(runs)
    md = markdown(entries)
    print(md)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "cooldown.md").write_text(md, encoding="utf-8")
        payload = {"command": " ".join(["python", "benchmarks/cooldown_table.py", *sys.argv[1:]]),
                   "entries": entries}  # fmt: skip
        (args.out / "cooldown.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
