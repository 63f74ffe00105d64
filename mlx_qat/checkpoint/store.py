"""Checkpoint directories: save one atomically, list them, keep the newest, load one.

A checkpoint is built as `step_XXXXXXXX.tmp-<pid>` (every file fsynced) and `os.replace`d
onto its final name, so a partial directory never has the final name; `list_checkpoints`
ignores `.tmp-*`. Every read is verified (`integrity`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..fileio import atomic_write_json, fsync_path
from .integrity import (
    DROP_HINT,
    FORMAT,
    MODEL_FILE,
    OPTIMIZER_FILE,
    RECORDED,
    STATE_FILE,
    CheckpointError,
    read_arrays,
    read_json,
    read_state,
    record_file,
    verify_file,
    write_checksums,
)

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STEP_DIR = re.compile(r"^step_(\d{8})$")


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        path: its directory.
        model_config: config.json (mlx-lm model config).
        qat: qat.json.
        state: state.json.
        weights: model.safetensors arrays.
        optimizer_state: optimizer.safetensors arrays (empty when not loaded).
    """

    path: Path
    model_config: dict
    qat: dict
    state: dict
    weights: dict[str, mx.array] = field(default_factory=dict)
    optimizer_state: dict[str, mx.array] = field(default_factory=dict)

    @property
    def step(self) -> int:
        return int(self.state["step"])


def step_dir_name(step: int) -> str:
    """`step_XXXXXXXX`."""
    return f"step_{int(step):08d}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as (step, path), oldest first (`.tmp-*` ignored)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = STEP_DIR.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def _save_arrays(path: Path, arrays: dict[str, mx.array]) -> None:
    mx.save_safetensors(str(path), arrays)
    fsync_path(path)


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model: nn.Module,
    optimizer,
    state: dict,
    model_config: dict,
    qat: dict,
    keep: int | None = None,
    protect: tuple[int, ...] = (),
) -> Path:
    """Write `run_dir/checkpoints/step_XXXXXXXX/` atomically and keep the last `keep`.

    Args:
        run_dir: the run directory.
        step: optimizer steps completed.
        model: the prepared model (all its parameters are saved).
        optimizer: its optimizer (`optimizer.state` is saved flattened), or None.
        state: the training state (step, tokens_seen, phase, data, rng, config_hash, eval...).
        model_config: the mlx-lm config.json dict.
        qat: {"qat_config": dict, "fake_quant": bool, "phase": "fp" | "qat"}.
        keep: keep only this many newest checkpoints (None: all).
        protect: steps never deleted by `keep` (e.g. the FP→QAT switch).

    Returns:
        The final checkpoint directory.
    """
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / f"{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        mx.eval(model.parameters())
        _save_arrays(tmp / MODEL_FILE, dict(tree_flatten(model.parameters())))
        opt_arrays = dict(tree_flatten(optimizer.state)) if optimizer is not None else {}
        _save_arrays(tmp / OPTIMIZER_FILE, opt_arrays)
        atomic_write_json(tmp / "config.json", model_config)
        atomic_write_json(tmp / "qat.json", qat)
        # Hashes of the bytes on disk (read back), so what is verified is what was written.
        files = {n: record_file(tmp / n) for n in RECORDED}
        state = {**state, "step": int(step), "format": FORMAT, "files": files}
        atomic_write_json(tmp / STATE_FILE, state)
        write_checksums(tmp, files)
        fsync_path(tmp)
        if final.exists():  # re-saving a step (e.g. after a resume): swap it out whole
            _remove_dir(final)
        os.replace(tmp, final)
        fsync_path(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep is not None:
        prune_checkpoints(run_dir, keep, protect)
    logger.info("saved checkpoint %s", final)
    return final


def _remove_dir(path: Path) -> None:
    # Rename to a .tmp- name first so a half-deleted directory never looks complete.
    doomed = path.with_name(f"{path.name}.tmp-del-{os.getpid()}")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def prune_checkpoints(run_dir: str | os.PathLike, keep: int, protect: tuple[int, ...] = ()):
    """Delete all but the newest `keep` checkpoints (steps in `protect` are kept too)."""
    found = [(s, p) for s, p in list_checkpoints(run_dir) if s not in set(protect)]
    for _, path in found[: max(0, len(found) - keep)]:
        _remove_dir(path)
        logger.info("removed old checkpoint %s", path)


def remove_stale_tmp(run_dir: str | os.PathLike) -> list[Path]:
    """Delete leftover `*.tmp-*` directories (from killed processes) under checkpoints/."""
    root = Path(run_dir) / CHECKPOINTS
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            if ".tmp-" in p.name:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
                removed.append(p)
    return removed


def load_checkpoint(path: str | os.PathLike, optimizer: bool = True) -> Checkpoint:
    """Read a checkpoint directory (or a run directory: its latest checkpoint), verifying the
    size and sha256 of every file it reads.

    Args:
        path: `run_dir/checkpoints/step_XXXXXXXX` or `run_dir`.
        optimizer: also read (and verify) optimizer.safetensors.

    Raises:
        CheckpointError: missing, truncated, corrupt or edited files (naming them and the fix).
    """
    path = Path(path)
    if (path / CHECKPOINTS).is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"run {path}: no complete checkpoint in {CHECKPOINTS}/")
        path = latest
    if ".tmp-" in path.name:
        raise CheckpointError(
            f"{path}: a partially written checkpoint (.tmp-*); it is never loaded. Pass a "
            "complete step_XXXXXXXX directory"
        )
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    state, sums = read_state(path)
    files = state.get("files") or {}
    if not isinstance(files, dict):
        raise CheckpointError(
            f"checkpoint {path}: state.json 'files' is not a mapping. {DROP_HINT}"
        )
    wanted = [n for n in RECORDED if optimizer or n != OPTIMIZER_FILE]
    for name in wanted:
        verify_file(path, name, files.get(name), sums)
    model_config = read_json(path / "config.json")
    qat = read_json(path / "qat.json")
    weights = read_arrays(path / MODEL_FILE)
    opt = read_arrays(path / OPTIMIZER_FILE) if optimizer else {}
    return Checkpoint(path, model_config, qat, state, weights, opt)
