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
                                         "config_hash", "tokenizer_sha256", "eval",
                                         "format", "files", ...}
        SHA256SUMS                      sha256 of every file above (`sha256sum -c` format)

A checkpoint is built as `step_XXXXXXXX.tmp-<pid>` (every file fsynced) and `os.replace`d onto
its final name, so a partial directory never has the final name; `list_checkpoints` ignores
`.tmp-*`.

Integrity (format 2): state.json records the size and sha256 of the four other files, and
SHA256SUMS (written last) the sha256 of all five. `load_checkpoint` verifies state.json against
SHA256SUMS before trusting it, then each file it reads against both (weights' sizes first, so
a truncated file is named as such): a flipped bit, an edited step or edited bits are refused
naming the file. Checkpoints from before format 2 still load, with a warning that they cannot
be verified (refusing them would strand finished runs; `seal_checkpoint` upgrades one the user
trusts); a format-2 one without SHA256SUMS is refused. Every failure is a `CheckpointError`
naming the path and the fix. `build_model` rebuilds the trained model.
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

from .fileio import (
    atomic_write_json,
    atomic_write_text,
    fsync_path,
    new_tmp_dir,
    remove_aside,
    sha256_file,
)

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STEP_DIR = re.compile(r"^step_(\d{8})$")
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
CHECKSUMS = "SHA256SUMS"
FORMAT = "mlx_qat.checkpoint/2"
# Files whose size and sha256 state.json records (SHA256SUMS adds state.json itself).
RECORDED = (MODEL_FILE, OPTIMIZER_FILE, "config.json", "qat.json")
DROP_HINT = "Delete the checkpoint to fall back to the previous one, or pass another checkpoint"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not match the run (the message says which)."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: its directory, config.json, qat.json, state.json and arrays
    (`optimizer_state` is empty when not loaded)."""

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
    found = ((STEP_DIR.match(p.name), p) for p in root.iterdir())
    return sorted((int(m.group(1)), p) for m, p in found if m and p.is_dir())


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
    """Write `run_dir/checkpoints/step_XXXXXXXX/` atomically (see the layout above) and return
    it; keep only the newest `keep` (None: all) besides the steps in `protect` (e.g. the FP→QAT
    switch). `optimizer` may be None (an empty optimizer file)."""
    root = Path(run_dir) / CHECKPOINTS
    final = root / step_dir_name(step)
    tmp = new_tmp_dir(final)
    try:
        mx.eval(model.parameters())
        _save_arrays(tmp / MODEL_FILE, dict(tree_flatten(model.parameters())))
        opt_arrays = dict(tree_flatten(optimizer.state)) if optimizer is not None else {}
        _save_arrays(tmp / OPTIMIZER_FILE, opt_arrays)
        atomic_write_json(tmp / "config.json", model_config)
        atomic_write_json(tmp / "qat.json", qat)
        # Hashes of the bytes on disk (read back), so what is verified is what was written.
        files = {n: _record_file(tmp / n) for n in RECORDED}
        state = {**state, "step": int(step), "format": FORMAT, "files": files}
        atomic_write_json(tmp / STATE_FILE, state)
        _write_checksums(tmp, files)
        fsync_path(tmp)
        if final.exists():  # re-saving a step (e.g. after a resume): swap it out whole
            remove_aside(final)
        os.replace(tmp, final)
        fsync_path(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep is not None:
        prune_checkpoints(run_dir, keep, protect)
    logger.info("saved checkpoint %s", final)
    return final


def prune_checkpoints(run_dir: str | os.PathLike, keep: int, protect: tuple[int, ...] = ()):
    """Delete all but the newest `keep` checkpoints (steps in `protect` are kept too)."""
    found = [(s, p) for s, p in list_checkpoints(run_dir) if s not in set(protect)]
    for _, path in found[: max(0, len(found) - keep)]:
        remove_aside(path)
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
    size and sha256 of every file it reads (`optimizer`: optimizer.safetensors too).

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
    state, sums = _read_state(path)
    files = state.get("files") or {}
    if not isinstance(files, dict):
        raise CheckpointError(
            f"checkpoint {path}: state.json 'files' is not a mapping. {DROP_HINT}"
        )
    for name in RECORDED:
        if optimizer or name != OPTIMIZER_FILE:
            _verify_file(path, name, files.get(name), sums)
    model_config = _read_json(path / "config.json")
    qat = _read_json(path / "qat.json")
    weights = _read_arrays(path / MODEL_FILE)
    opt = _read_arrays(path / OPTIMIZER_FILE) if optimizer else {}
    return Checkpoint(path, model_config, qat, state, weights, opt)


def _record_file(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _write_checksums(path: Path, files: dict) -> None:
    sums = {n: f["sha256"] for n, f in files.items()} | {STATE_FILE: sha256_file(path / STATE_FILE)}
    atomic_write_text(path / CHECKSUMS, "".join(f"{h}  {n}\n" for n, h in sorted(sums.items())))


def seal_checkpoint(path: str | os.PathLike) -> Path:
    """Record the sha256 of a checkpoint's files as they are now (state.json and SHA256SUMS).

    For a deliberate edit, or to upgrade a checkpoint written before checksums existed: after
    this, `load_checkpoint` trusts the files exactly as they are, so only seal files you trust.
    """
    path = Path(path)
    state = _read_json(path / STATE_FILE)
    files = {n: _record_file(path / n) for n in RECORDED if (path / n).is_file()}
    atomic_write_json(path / STATE_FILE, {**state, "format": FORMAT, "files": files})
    _write_checksums(path, files)
    fsync_path(path)
    return path


def _missing_file(path: Path) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path.parent}: missing {path.name}; the checkpoint is incomplete. {DROP_HINT}"
    )


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            out = json.load(f)
    except FileNotFoundError:
        raise _missing_file(path) from None
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {path.parent}: {path.name} is corrupt ({e}). {DROP_HINT}"
        ) from None
    if not isinstance(out, dict):
        raise CheckpointError(f"checkpoint {path.parent}: {path.name} is not a JSON object")
    return out


def _read_checksums(path: Path) -> dict[str, str] | None:
    f = path / CHECKSUMS
    if not f.is_file():
        return None
    try:
        lines = f.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {path}: {CHECKSUMS} is unreadable ({e})") from None
    sums = {}
    for line in lines:
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            raise CheckpointError(
                f"checkpoint {path}: {CHECKSUMS} is corrupt ({line!r}). {DROP_HINT}"
            )
        sums[name] = digest
    return sums


def _verify_file(path: Path, name: str, recorded, sums: dict[str, str] | None) -> None:
    """Check `path/name` against state.json's record (size and sha256; a bare size before
    format 2) and SHA256SUMS (absent before format 2)."""
    f = path / name
    if not f.is_file():
        raise _missing_file(f)
    want = recorded if isinstance(recorded, dict) else {"bytes": recorded}
    size = f.stat().st_size
    # Sizes first for the weights (a truncated file is named as such, before hashing GBs);
    # a JSON file of another size is simply "corrupt or edited" below.
    if name.endswith(".safetensors") and want.get("bytes") not in (None, size):
        raise CheckpointError(
            f"checkpoint {path}: {name} has {size} bytes, state.json says {want['bytes']}; "
            f"the file is truncated or was replaced. {DROP_HINT}"
        )
    if sums is None:
        return
    expected = sums.get(name)
    if expected is None or want.get("sha256", expected) != expected:
        raise CheckpointError(
            f"checkpoint {path}: {CHECKSUMS} and state.json disagree about {name} (or do not "
            f"record it); the checkpoint is corrupt. {DROP_HINT}"
        )
    actual = sha256_file(f)
    if actual != expected:
        raise CheckpointError(
            f"checkpoint {path}: {name} is corrupt or was edited: its sha256 is {actual}, the "
            f"checkpoint recorded {expected}. {DROP_HINT}"
        )


def _read_arrays(path: Path) -> dict[str, mx.array]:
    try:
        return mx.load(str(path))
    except (RuntimeError, ValueError, OSError) as e:
        msg = f"checkpoint {path.parent}: cannot read {path.name} ({e}); the file is corrupt"
        raise CheckpointError(f"{msg}. {DROP_HINT}") from None


def _read_state(path: Path) -> tuple[dict, dict[str, str] | None]:
    """state.json, verified against SHA256SUMS, and SHA256SUMS (None: before format 2)."""
    sums = _read_checksums(path)
    if sums is not None:
        _verify_file(path, STATE_FILE, None, sums)
    state = _read_json(path / STATE_FILE)
    if sums is None:
        if state.get("format") is not None:
            raise CheckpointError(
                f"checkpoint {path}: missing {CHECKSUMS}; cannot verify it. {DROP_HINT}"
            )
        logger.warning(
            "checkpoint %s: written before checksums (no %s); its files are NOT verified. "
            "mlx_qat.checkpoint.seal_checkpoint(path) records them as they are now",
            path,
            CHECKSUMS,
        )
    return state, sums


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
