"""`mlx_qat.sweep`: run a scaling-law grid (`mlx_qat.sweep`), one row per run in
`<out>/results.jsonl`; re-running continues where it stopped.

    mlx_qat.sweep sweep_tiny --dry-run         # a shipped sweep by name: runs, trunks, time
    mlx_qat.sweep sweep_tiny --shard 0/2       # machine A: <out>/shard-0-of-2/results.jsonl
    mlx_qat.fit runs/sweep_tiny                # every results.jsonl below it, merged

The resolved settings go to `<out>/sweep.yaml` (per shard, `<out>/shard-i-of-n/`) and the sweep
file to `grid.yaml` beside it, while the folder is locked (`sweep.lock`: a second sweep there
is refused, naming the first's PID); a folder whose grid.yaml is another study is refused
before anything is written.
"""

from __future__ import annotations

import shutil
import time

from .common import add_common, config_file, save_resolved, shipped_configs, verb_main, verb_parser


def build_parser():
    """The flags of `mlx_qat.sweep`."""
    p = verb_parser(
        "sweep",
        "Train a grid of (model, tokens, bits, QAT fraction, pipeline, seed) runs "
        "with shared FP trunks; one row per finished run in <out>/results.jsonl.",
    )
    p.add_argument(
        "sweep",
        nargs="?",
        help="the sweep YAML file (grids, shared settings), or a shipped one by name "
        f"({', '.join(n for n in shipped_configs() if n.startswith('sweep'))})",
    )
    p.add_argument("--jobs", type=int, default=1, help="runs side by side (each a process)")
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="run share I of N of the trunks (0 <= I < N; whole trunks, balanced by tokens) into "
        "<out>/shard-I-of-N/results.jsonl: one machine each; mlx_qat.fit <out> merges them",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the plan and the estimated time only"
    )
    p.add_argument(
        "--report-to",
        metavar="TRACKER",
        help="every run also reports its metrics.jsonl records to an experiment tracker through "
        "mlx-lm: wandb or swanlab (comma-separated for both; pip install wandb / swanlab)",
    )
    p.add_argument(
        "--project-name", help="the tracker's project (default: the sweep folder's name)"
    )
    add_common(p)
    return p


def _plan_text(sweep, trunks, rates: dict, shard=None) -> str:
    from .. import sweep as sw

    jobs = sw.sweep_jobs(sweep, trunks)
    path = sw.results_path(sweep, shard)
    done = {(r["name"], r["config_hash"]) for r in sw.read_rows(path)}
    left = [j for j in jobs if (j.name, j.config.hash()) not in done]
    trained = sum(t.tokens_trained() for t in trunks)
    alone = sum(t.tokens_independent() for t in trunks)
    part = f" (shard {shard.index}/{shard.count})" if shard else ""
    lines = [
        f"sweep {sweep.source}{part}: {len(jobs)} runs in {len(trunks)} trunks "
        f"({len(jobs) - len(left)} done, {len(left)} to run) -> {path}",
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
        raise ValueError("give the sweep file: mlx_qat.sweep SWEEP.yaml (or sweep_tiny)")
    if opts["jobs"] < 1:
        raise ValueError(f"--jobs {opts['jobs']}: must be >= 1")
    if opts.get("report_to"):
        from ..train.report import tracker_names

        tracker_names(opts["report_to"])  # installed? before anything is written
    opts["sweep"] = str(config_file(opts["sweep"], "sweep file"))
    sweep = sw.load_sweep(opts["sweep"])
    shard = sw.Shard.parse(opts["shard"]) if opts.get("shard") else None
    trunks = sw.plan_trunks(sweep)
    trunks = shard.take(trunks) if shard else trunks
    sw.check_same_sweep(sweep)  # before anything is written (and again under the lock)
    if opts["dry_run"]:
        rates = {}
        for t in trunks:
            name = t.root.point.model.name
            if name not in rates:
                rates[name] = sw.measure_tokens_per_s(t.root.config)
        print(_plan_text(sweep, trunks, rates, shard))
        return 0
    with sw.lock_folder(sweep.out, shard) as where:  # shards never write the same file
        sw.check_same_sweep(sweep)
        save_resolved(where / "sweep.yaml", "sweep", opts)
        shutil.copyfile(opts["sweep"], where / "grid.yaml")
        return _train(sweep, trunks, shard, opts)


def _train(sweep, trunks, shard, opts: dict) -> int:
    from .. import sweep as sw

    path = sw.results_path(sweep, shard)
    n = len(sw.sweep_jobs(sweep, trunks))
    state = {"done": len(sw.read_rows(path)), "t0": time.time(), "tokens": 0}
    total_tokens = sum(t.tokens_trained() for t in trunks)

    def event(kind, job, info):
        if kind == "start":
            print(f"[{state['done']}/{n}] {job.name}: training", flush=True)
        elif kind == "done":
            state["done"] += 1
            state["tokens"] += job.member.tokens
            rate = state["tokens"] / max(time.time() - state["t0"], 1e-9)
            left = max(total_tokens - state["tokens"], 0) / rate if rate else 0
            # the row's final loss: the float model's for a pure-FP run (its "qat" is its PTQ)
            ev = info.get("eval") or {}
            loss = ev.get("fp") if job.member.plan.qat_steps == 0 else ev.get("qat")
            print(
                f"[{state['done']}/{n}] {job.name}: done, loss {loss['loss']:.4f}"
                f" (~{left / 60:.0f} min left)"
                if loss
                else f"[{state['done']}/{n}] {job.name}: done",
                flush=True,
            )

    rows = sw.run_sweep(
        sweep, opts["jobs"], event, shard, opts.get("report_to"), opts.get("project_name")
    )
    print(f"mlx_qat.sweep: {len(rows)} rows in {path}")
    if shard:
        print(f"merge the shards (copied into one folder) with: mlx_qat.fit {sweep.out}")
    return 0


main = verb_main("sweep", build_parser, _run)
