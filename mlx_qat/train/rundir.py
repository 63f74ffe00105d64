"""The run directory: what a run may write into, and what `--overwrite` may delete.

A run directory holds only what the trainer (and `mlx_qat.eval`) writes there: `RUN_ENTRIES`.
Before anything is written, `check_out_dir` decides:

* new or empty directory: any run;
* `--resume` of a run with checkpoints: continue it (other files are left alone); without
  checkpoints it starts at step 0, as a new run does;
* a directory with files that are not a run's (`notes.txt`, a hand-written `config.yaml`, a
  repository root): refused, whatever the flags, so a run never overwrites a user's files;
* a run with checkpoints: a plain run is refused (`--resume` it, or `--overwrite`), and so
  is `--branch-from` (also into a finished run's directory), so branching never overwrites or
  prunes another run's checkpoints. An attempt that stopped before its first checkpoint has
  nothing to resume: a plain or branched run starts over there (as a sweep re-runs a killed
  branch);
* `--overwrite`: `clear_run` deletes the run's own entries (checkpoints, metrics, result,
  config, tokenizer, FP twin, plot, eval) and keeps `data/` (content-addressed, reusable)
  and an experiment tracker's files (`wandb/`, `swanlog/`: `--report-to`'s, maybe not synced).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..checkpoint import list_checkpoints
from ..fileio import ensure_writable_dir

CONFIG_HEADER = "# mlx_qat.train resolved config"
DATA = "data"
TRACKER_DIRS = ("wandb", "swanlog")  # --report-to's files (report.py): kept by --overwrite
RUN_ENTRIES = (
    "config.yaml",
    "metrics.jsonl",
    "result.json",
    "loss.png",
    "eval.json",
    "eval.yaml",
    "tokenizer",
    "checkpoints",
    "fp_twin",
    DATA,
    *TRACKER_DIRS,
)


def foreign_entries(run: Path) -> list[str]:
    """Names in `run` that a training run does not write (a config.yaml without the trainer's
    header counts: it is the user's)."""
    # Hidden files (.DS_Store...) are never written by a run, so they cannot be overwritten.
    names = sorted(p.name for p in run.iterdir() if not p.name.startswith("."))
    names = [n for n in names if ".tmp-" not in n]
    out = [n for n in names if n not in RUN_ENTRIES]
    config = run / "config.yaml"
    if config.is_file():
        try:
            ours = config.read_text(encoding="utf-8").startswith(CONFIG_HEADER)
        except (OSError, UnicodeDecodeError):
            ours = False
        if not ours:
            out.append("config.yaml (not written by mlx_qat.train)")
    return out


def check_out_dir(cfg) -> None:
    """Raise ValueError when training per `cfg` could overwrite something it must not (see the
    module docstring); reads only."""
    run = Path(cfg.out)
    if run.exists() and not run.is_dir():
        raise ValueError(f"--out {run}: is a file, not a directory; choose another --out")
    if not run.is_dir() or (cfg.resume and list_checkpoints(run)):
        return
    foreign = foreign_entries(run)
    if foreign:
        shown = ", ".join(foreign[:6]) + (", ..." if len(foreign) > 6 else "")
        raise ValueError(
            f"--out {run}: holds files that are not a training run's ({shown}); a run writes "
            "config.yaml, metrics.jsonl, checkpoints/ and tokenizer/ there. Choose a new or "
            "empty directory"
        )
    if cfg.overwrite:
        return
    found = list_checkpoints(run)
    if cfg.branch_from:
        trained = [n for n in ("result.json",) if (run / n).exists()]
        if found:
            trained.insert(0, f"checkpoints up to {found[-1][1].name}")
        if trained:
            raise ValueError(
                f"--out {run}: already holds a run ({', '.join(trained)}); --branch-from would "
                "overwrite it. Choose a new --out, continue that run with --resume, or pass "
                "--overwrite to delete it and branch there"
            )
    elif found:
        raise ValueError(
            f"run directory {run} already has checkpoints (last: {found[-1][1].name}); pass "
            "--resume to continue it, --overwrite to start it afresh, or choose another --out"
        )


def make_run_dir(run: Path) -> None:
    """Create `run`, naming it and the fix when that is not possible (read-only, a file)."""
    ensure_writable_dir(run, f"--out {run}")


def clear_run(run: Path) -> list[str]:
    """Delete the run's own entries except `data/` (for `--overwrite`); returns their names.
    Each is renamed to a `.tmp-` name first, so a half-deleted one never looks complete."""
    removed = []
    for name in RUN_ENTRIES:
        path = run / name
        if name in (DATA, *TRACKER_DIRS) or not (path.exists() or path.is_symlink()):
            continue
        doomed = run / f"{name}.tmp-del-{os.getpid()}"
        os.replace(path, doomed)
        if doomed.is_dir() and not doomed.is_symlink():
            shutil.rmtree(doomed, ignore_errors=True)
        else:
            doomed.unlink()
        removed.append(name)
    return removed
