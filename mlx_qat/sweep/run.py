"""Running a sweep: trunks first, branches from their checkpoints, one row per finished run.

Re-running a sweep skips every run whose row (same name and config hash) is in
`results.jsonl`, resumes an interrupted run from its last checkpoint, and re-reads a run that
finished without a row from its `result.json`: a kill loses at most the work since a run's
last checkpoint. `jobs > 1` trains runs side by side, one `python -m mlx_qat train` process
each; a trunk's branches start when the trunk has finished. `shard` (`--shard i/n`) trains
that share of the trunks into the shard's own results file, one plain process per machine
(under `mlx.launch` every rank would append the same rows: refused).
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path

from ..train.config import TrainConfig
from .folder import check_same_sweep, lock_folder
from .grid import Sweep
from .results import append_row, make_row, read_rows
from .shard import RESULTS, Shard
from .trunks import Member, Trunk, plan_trunks

logger = logging.getLogger(__name__)

OLD_SPEC = "sweep_run.yaml"  # a run's config as sweeps with --jobs once wrote it, in its dir


@dataclass
class Job:
    """One run to train: its trunk member, its final config, and the run it branches from."""

    member: Member
    config: TrainConfig
    after: str | None

    @property
    def name(self) -> str:
        return self.member.point.name


def sweep_jobs(sweep: Sweep, trunks: list[Trunk] | None = None) -> list[Job]:
    """Every run of the sweep in a valid order (each trunk's root before its branches)."""
    jobs = []
    for t in trunks if trunks is not None else plan_trunks(sweep):
        root = t.root.point.name
        for m, cfg in zip(t.members, t.configs()):
            jobs.append(Job(m, cfg, root if cfg.branch_from else None))
    return jobs


def _ready_config(job: Job) -> TrainConfig:
    """The config to run now: resume a run that has checkpoints; branch otherwise."""
    from ..checkpoint import list_checkpoints

    cfg = job.config
    if list_checkpoints(cfg.out):
        return replace(cfg, resume=True, branch_from=None)
    if cfg.branch_from and not Path(cfg.branch_from).is_dir():
        # The trunk finished before this branch point was asked for (a changed grid): train
        # this run from the start instead.
        logger.warning(
            "%s: no trunk checkpoint %s; training from step 0", job.name, cfg.branch_from
        )
        return replace(cfg, branch_from=None)
    return cfg


def _train_in_process(cfg: TrainConfig) -> dict:
    from ..train import train

    return train(cfg)


def _train_subprocess(cfg: TrainConfig) -> dict:
    out = Path(cfg.out)
    # The config goes outside the run directory: `train` refuses a directory holding files
    # that are not a run's. Sweeps that wrote it there left it behind: it is theirs to remove.
    (out / OLD_SPEC).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="mlx_qat_sweep_") as tmp:
        spec = Path(tmp) / "train.yaml"
        spec.write_text(cfg.to_yaml(), encoding="utf-8")
        cmd = [sys.executable, "-m", "mlx_qat", "train", "--config", str(spec)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{cfg.out}: training failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads((out / "result.json").read_text(encoding="utf-8"))


def _finished_result(cfg: TrainConfig) -> dict | None:
    """The result of a run that finished (result.json for this config) but has no row yet."""
    path = Path(cfg.out) / "result.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text(encoding="utf-8"))
    done = result.get("steps") == result["plan"]["total_steps"]
    done = done and (not cfg.fp_twin or "twin" in result)  # killed while its twin trained
    return result if done and result.get("config_hash") == cfg.hash() else None


def results_path(sweep: Sweep, shard: Shard | None = None) -> Path:
    """`<out>/results.jsonl`, or the shard's own file."""
    return shard.results(sweep.out) if shard else sweep.out / RESULTS


def run_sweep(
    sweep: Sweep,
    jobs: int = 1,
    on_event=None,
    shard: Shard | None = None,
    report_to: str | None = None,
    project_name: str | None = None,
) -> list[dict]:
    """Train every run of `sweep` (of `shard`'s trunks) that has no row yet; returns all rows
    of the results file (the shard's). FolderBusy while another sweep writes the folder,
    ValueError when it holds another study (`folder.py`).

    Args:
        jobs: runs side by side (1: in this process; more: one subprocess each).
        on_event: `on_event(kind, job, info)` for progress ("start", "done", "skip").
        report_to: every run also reports its metrics to this tracker ("wandb", "swanlab"), in
            the project `project_name` (default: the sweep folder's name); neither changes a
            run's config hash.
    """
    from ..train.dist import process_count

    if process_count() > 1:
        raise ValueError(
            "mlx_qat.sweep runs under mlx.launch: every process would train and append the "
            "same runs. Split a sweep across machines with --shard I/N instead, one plain "
            "process per machine (see the README)"
        )
    check_same_sweep(sweep)
    with lock_folder(sweep.out, shard):
        report = {"report_to": report_to, "project_name": project_name or sweep.out.name}
        return _run_locked(sweep, jobs, on_event, shard, report if report_to else {})


def _run_locked(sweep: Sweep, jobs: int, on_event, shard: Shard | None, report: dict) -> list[dict]:
    path = results_path(sweep, shard)
    trunks = plan_trunks(sweep)
    trunks = shard.take(trunks, warn=False) if shard else trunks  # the CLI warned
    rows = read_rows(path)
    have = {(r["name"], r["config_hash"]) for r in rows}
    todo = [j for j in sweep_jobs(sweep, trunks) if (j.name, j.config.hash()) not in have]
    finished: set[str] = {r["name"] for r in rows}
    train_fn = _train_in_process if jobs <= 1 else _train_subprocess
    event = on_event or (lambda *a: None)

    def finish(job: Job, result: dict) -> None:
        append_row(path, make_row(job.name, job.member.point.groups, job.config, result))
        finished.add(job.name)
        event("done", job, result)

    def start(job: Job) -> dict:
        cfg = replace(_ready_config(job), **report)
        result = _finished_result(cfg)
        if result is None:
            event("start", job, cfg)
            result = train_fn(cfg)
        return result

    if jobs <= 1:  # in this thread: MLX's streams belong to the thread that made them
        for job in todo:
            finish(job, start(job))
        return read_rows(path)
    pending = list(todo)
    with ThreadPoolExecutor(max_workers=jobs) as pool:  # threads only wait on processes
        running: dict = {}
        while pending or running:
            ready = [j for j in pending if j.after is None or j.after in finished]
            for job in ready[: jobs - len(running)]:
                pending.remove(job)
                running[pool.submit(start, job)] = job
            if not running:  # a branch whose trunk has a row from an older grid
                job = pending.pop(0)
                running[pool.submit(start, job)] = job
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                job = running.pop(fut)
                finish(job, fut.result())
    return read_rows(path)


def measure_tokens_per_s(config: TrainConfig, steps: int = 4) -> float:
    """Training tokens/s of `config` here (median step after the compiling one), for the dry
    run's time estimate."""
    from ..train import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        t = Trainer(replace(config, out=tmp, resume=False, branch_from=None, save_steps=[]))
        t.setup()
        times = []
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            t.train_step()
            t.step += 1
            times.append(time.perf_counter() - t0)
    dt = sorted(times[1:])[len(times[1:]) // 2]
    return config.tokens_per_step / dt if dt > 0 else math.inf
