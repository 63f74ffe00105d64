"""`mlx_qat.sweep`: run a scaling-law grid (`mlx_qat.sweep`), one row per run in
`<out>/results.jsonl`; re-running continues where it stopped.

    mlx_qat.sweep configs/sweep_tiny.yaml --dry-run    # runs, trunks, tokens, estimated time
    mlx_qat.sweep configs/sweep_tiny.yaml              # train (skips finished rows)
    mlx_qat.fit runs/sweep_tiny/results.jsonl          # the loss law and the optimal fraction

The resolved settings are written to `<out>/sweep.yaml`.
"""

from __future__ import annotations

import argparse
import shutil
import time

from .common import add_common, run_verb, save_resolved


def build_parser() -> argparse.ArgumentParser:
    """The flags of `mlx_qat.sweep`."""
    p = argparse.ArgumentParser(
        prog="mlx_qat.sweep",
        description="Train a grid of (model, tokens, bits, QAT fraction, pipeline, seed) runs "
        "with shared FP trunks; one row per finished run in <out>/results.jsonl.",
    )
    p.add_argument("sweep", nargs="?", help="the sweep YAML file (grids, shared settings)")
    p.add_argument("--jobs", type=int, default=1, help="runs side by side (each a process)")
    p.add_argument(
        "--dry-run", action="store_true", help="print the plan and the estimated time only"
    )
    add_common(p)
    return p


def _plan_text(sweep, trunks, rates: dict) -> str:
    from .. import sweep as sw

    jobs = sw.sweep_jobs(sweep, trunks)
    done = {(r["name"], r["config_hash"]) for r in sw.read_rows(sweep.out / sw.RESULTS)}
    left = [j for j in jobs if (j.name, j.config.hash()) not in done]
    trained = sum(t.tokens_trained() for t in trunks)
    alone = sum(t.tokens_independent() for t in trunks)
    lines = [
        f"sweep {sweep.source}: {len(jobs)} runs in {len(trunks)} trunks "
        f"({len(jobs) - len(left)} done, {len(left)} to run) -> {sweep.out}",
        f"  tokens trained {trained:,} (as independent runs: {alone:,}; trunk sharing saves "
        f"{100 * (1 - trained / max(alone, 1)):.1f}%)",
    ]
    seconds = 0.0
    for t in trunks:
        rate = rates.get(t.root.point.model.name)
        secs = t.tokens_trained() / rate if rate else None
        seconds += secs or 0
        lines.append(
            f"  trunk {t.root.point.name}: {len(t.members)} runs, branches at "
            f"{t.save_steps or '-'}, {t.tokens_trained():,} tokens"
            + (f", ~{secs / 60:.1f} min at {rate:,.0f} tok/s" if secs else "")
        )
    if rates:
        lines.append(f"  estimated time: {seconds / 60:.1f} min (measured tokens/s per model)")
    return "\n".join(lines)


def _run(opts: dict) -> int:
    from .. import sweep as sw

    if not opts.get("sweep"):
        raise ValueError("give the sweep file: mlx_qat.sweep SWEEP.yaml (see configs/)")
    if opts["jobs"] < 1:
        raise ValueError(f"--jobs {opts['jobs']}: must be >= 1")
    sweep = sw.load_sweep(opts["sweep"])
    trunks = sw.plan_trunks(sweep)
    if opts["dry_run"]:
        rates = {}
        for t in trunks:
            name = t.root.point.model.name
            if name not in rates:
                rates[name] = sw.measure_tokens_per_s(t.root.config)
        print(_plan_text(sweep, trunks, rates))
        return 0
    sweep.out.mkdir(parents=True, exist_ok=True)
    save_resolved(sweep.out / "sweep.yaml", "sweep", opts)
    shutil.copyfile(opts["sweep"], sweep.out / "grid.yaml")
    n = len(sw.sweep_jobs(sweep, trunks))
    state = {"done": len(sw.read_rows(sweep.out / sw.RESULTS)), "t0": time.time(), "tokens": 0}
    total_tokens = sum(t.tokens_trained() for t in trunks)

    def event(kind, job, info):
        if kind == "start":
            print(f"[{state['done']}/{n}] {job.name}: training", flush=True)
        elif kind == "done":
            state["done"] += 1
            state["tokens"] += job.member.tokens
            rate = state["tokens"] / max(time.time() - state["t0"], 1e-9)
            left = max(total_tokens - state["tokens"], 0) / rate if rate else 0
            loss = (info.get("eval") or {}).get("qat") or (info.get("eval") or {}).get("fp")
            print(
                f"[{state['done']}/{n}] {job.name}: done, loss {loss['loss']:.4f}"
                f" (~{left / 60:.0f} min left)"
                if loss
                else f"[{state['done']}/{n}] {job.name}: done",
                flush=True,
            )

    rows = sw.run_sweep(sweep, jobs=opts["jobs"], on_event=event)
    print(f"mlx_qat.sweep: {len(rows)} rows in {sweep.out / sw.RESULTS}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `mlx_qat.sweep`; returns the exit status."""
    return run_verb("sweep", build_parser, _run, argv)
