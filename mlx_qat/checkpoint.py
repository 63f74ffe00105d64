"""Training checkpoints: one directory per step, written atomically, loaded strictly.

Layout (the export in `mlx_qat.convert` reads exactly this)::

    run_dir/config.yaml                 resolved TrainConfig
    run_dir/metrics.jsonl               one JSON object per line
    run_dir/tokenizer/                  the data's tokenizer (sentencepiece + HF files)
    run_dir/checkpoints/step_XXXXXXXX/  8-digit step = optimizer steps completed
        model.safetensors               dict(tree_flatten(model.parameters())) of the PREPARED
                                        model (float weights + quantizer parameters)
        optimizer.safetensors           flattened optimizer state
        config.json                     mlx-lm model config ({"model_type", <ModelArgs>})
        qat.json                        {"qat_config": QATConfig.to_dict(), "fake_quant",
                                         "phase": "fp" | "qat"}
        state.json                      {"step", "tokens_seen", "phase", "data", "rng",
                                         "config_hash", "eval", "files", ...}

A checkpoint is built as `step_XXXXXXXX.tmp-<pid>` (every file fsynced) and `os.replace`d
onto its final name, so a partial directory never has the final name; `latest_checkpoint`
ignores `.tmp-*`. `state.json` records each weight file's size, so a truncated file is refused
even before safetensors parsing. Every failure is a `CheckpointError` naming the path and
the fix.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .fileio import atomic_write_json, fsync_path

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STEP_DIR = re.compile(r"^step_(\d{8})$")
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
REQUIRED = (MODEL_FILE, OPTIMIZER_FILE, "config.json", "qat.json", "state.json")


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not match the run (the message says which)."""


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


def _save_arrays(path: Path, arrays: dict[str, mx.array]) -> int:
    mx.save_safetensors(str(path), arrays)
    fsync_path(path)
    return path.stat().st_size


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
        files = {MODEL_FILE: _save_arrays(tmp / MODEL_FILE, dict(tree_flatten(model.parameters())))}
        opt_arrays = dict(tree_flatten(optimizer.state)) if optimizer is not None else {}
        files[OPTIMIZER_FILE] = _save_arrays(tmp / OPTIMIZER_FILE, opt_arrays)
        atomic_write_json(tmp / "config.json", model_config)
        atomic_write_json(tmp / "qat.json", qat)
        atomic_write_json(tmp / "state.json", {**state, "step": int(step), "files": files})
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


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            out = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(
            f"checkpoint {path.parent}: missing {path.name}; the checkpoint is incomplete. "
            "Delete it to fall back to the previous one, or pass another checkpoint"
        ) from None
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {path.parent}: {path.name} is corrupt ({e}). Delete the checkpoint "
            "to fall back to the previous one, or pass another checkpoint"
        ) from None
    if not isinstance(out, dict):
        raise CheckpointError(f"checkpoint {path.parent}: {path.name} is not a JSON object")
    return out


def _read_arrays(path: Path, expected_size: int | None) -> dict[str, mx.array]:
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path.parent}: missing {path.name}; the checkpoint is incomplete. "
            "Delete it to fall back to the previous one"
        )
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        raise CheckpointError(
            f"checkpoint {path.parent}: {path.name} has {size} bytes, state.json says "
            f"{expected_size}; the file is truncated or was replaced. Delete the checkpoint to "
            "fall back to the previous one"
        )
    try:
        return mx.load(str(path))
    except (RuntimeError, ValueError, OSError) as e:
        raise CheckpointError(
            f"checkpoint {path.parent}: cannot read {path.name} ({e}); the file is corrupt. "
            "Delete the checkpoint to fall back to the previous one"
        ) from None


def load_checkpoint(path: str | os.PathLike, optimizer: bool = True) -> Checkpoint:
    """Read a checkpoint directory (or a run directory: its latest checkpoint).

    Args:
        path: `run_dir/checkpoints/step_XXXXXXXX` or `run_dir`.
        optimizer: also read optimizer.safetensors.

    Raises:
        CheckpointError: missing, truncated or corrupt files (naming them and the fix).
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
    state = _read_json(path / "state.json")
    files = state.get("files", {})
    model_config = _read_json(path / "config.json")
    qat = _read_json(path / "qat.json")
    weights = _read_arrays(path / MODEL_FILE, files.get(MODEL_FILE))
    opt = _read_arrays(path / OPTIMIZER_FILE, files.get(OPTIMIZER_FILE)) if optimizer else {}
    return Checkpoint(path, model_config, qat, state, weights, opt)


def qat_config_of(ckpt: Checkpoint):
    """The checkpoint's `QATConfig` (None when the model was never prepared)."""
    from .qat_config import QATConfig

    d = ckpt.qat.get("qat_config")
    if not d:
        return None
    try:
        return QATConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {ckpt.path}: invalid qat_config in qat.json ({e})"
        ) from None


def build_model(ckpt_or_path: Checkpoint | str | os.PathLike) -> nn.Module:
    """Rebuild the trained model: mlx-lm arch from config.json, `prepare`, strict weights.

    Fake quant is set as qat.json records it. The model is in eval mode.

    Example:
        >>> model = build_model("runs/main")  # latest checkpoint
    """
    from .models.presets import model_from_config
    from .prepare import prepare, set_fake_quant

    ckpt = ckpt_or_path
    if not isinstance(ckpt, Checkpoint):
        ckpt = load_checkpoint(ckpt, optimizer=False)
    try:
        model = model_from_config(ckpt.model_config)
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(
            f"checkpoint {ckpt.path}: config.json cannot build a model ({e})"
        ) from None
    qcfg = qat_config_of(ckpt)
    fake = bool(ckpt.qat.get("fake_quant", False))
    if qcfg is not None:
        prepare(model, qcfg, enabled=fake)
    try:
        model.load_weights(list(ckpt.weights.items()), strict=True)
    except ValueError as e:
        raise CheckpointError(
            f"checkpoint {ckpt.path}: {MODEL_FILE} does not match config.json/qat.json ({e}); "
            "the checkpoint is corrupt or from another model"
        ) from None
    if qcfg is not None:
        set_fake_quant(model, fake)
    mx.eval(model.parameters())
    model.eval()
    return model
