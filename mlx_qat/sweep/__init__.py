"""Scaling-law mini-sweeps: a YAML grid of runs sharing FP trunks, one row per run.

    >>> from mlx_qat.sweep import load_sweep, run_sweep
    >>> rows = run_sweep(load_sweep("my_sweep.yaml"))  # shipped: mlx_qat/configs/sweep_tiny.yaml

Modules: `grid` (the sweep file and its runs), `trunks` (which runs share an FP prefix and
where each branches), `results` (the rows, appended atomically), `run` (training them),
`shard` (`--shard i/n`: a deterministic share of the trunks per machine), `folder` (one sweep
writes a folder at a time, and a folder holds one study).
"""

from .folder import FolderBusy, check_same_sweep, lock_folder
from .grid import Sweep, load_sweep
from .results import append_row, make_row, read_rows
from .run import RESULTS, measure_tokens_per_s, results_path, run_sweep, sweep_jobs
from .shard import Shard
from .trunks import Trunk, branch_step, plan_trunks

__all__ = ["FolderBusy", "RESULTS", "Shard", "Sweep", "Trunk", "append_row", "branch_step",
    "check_same_sweep", "load_sweep", "lock_folder", "make_row", "measure_tokens_per_s",
    "plan_trunks", "read_rows", "results_path", "run_sweep", "sweep_jobs"]  # fmt: skip
