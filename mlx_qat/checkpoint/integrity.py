"""Checkpoint integrity: the file names, the checksums written with every checkpoint, and
the checks every read makes.

Integrity (format 2): state.json records the size and sha256 of the four other files, and
SHA256SUMS (written last) the sha256 of all five. `load_checkpoint` verifies state.json against
SHA256SUMS before trusting it, then each file it reads against both (weights' sizes first, so
a truncated file is named as such): a flipped bit, an edited step or edited bits are refused
naming the file. Checkpoints from before format 2 still load, with a warning that they cannot
be verified (refusing them would strand finished runs; `seal_checkpoint` upgrades one the user
trusts); a format-2 one without SHA256SUMS is refused. Every failure is a `CheckpointError`
naming the path and the fix.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import mlx.core as mx

from ..fileio import atomic_write_json, atomic_write_text, fsync_path, sha256_file

logger = logging.getLogger(__name__)

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


def record_file(path: Path) -> dict:
    """What state.json records of a file: its size and sha256."""
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def write_checksums(path: Path, files: dict) -> None:
    """SHA256SUMS of `files` (their records) and of state.json, in `sha256sum -c` format."""
    sums = {n: f["sha256"] for n, f in files.items()} | {STATE_FILE: sha256_file(path / STATE_FILE)}
    atomic_write_text(path / CHECKSUMS, "".join(f"{h}  {n}\n" for n, h in sorted(sums.items())))


def seal_checkpoint(path: str | os.PathLike) -> Path:
    """Record the sha256 of a checkpoint's files as they are now (state.json and SHA256SUMS).

    For a deliberate edit, or to upgrade a checkpoint written before checksums existed: after
    this, `load_checkpoint` trusts the files exactly as they are, so only seal files you trust.
    """
    path = Path(path)
    state = read_json(path / STATE_FILE)
    files = {n: record_file(path / n) for n in RECORDED if (path / n).is_file()}
    atomic_write_json(path / STATE_FILE, {**state, "format": FORMAT, "files": files})
    write_checksums(path, files)
    fsync_path(path)
    return path


def missing_file(path: Path) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path.parent}: missing {path.name}; the checkpoint is incomplete. {DROP_HINT}"
    )


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            out = json.load(f)
    except FileNotFoundError:
        raise missing_file(path) from None
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {path.parent}: {path.name} is corrupt ({e}). {DROP_HINT}"
        ) from None
    if not isinstance(out, dict):
        raise CheckpointError(f"checkpoint {path.parent}: {path.name} is not a JSON object")
    return out


def read_checksums(path: Path) -> dict[str, str] | None:
    """SHA256SUMS as {file name: sha256}, or None when there is none."""
    f = path / CHECKSUMS
    if not f.is_file():
        return None
    sums = {}
    try:
        lines = f.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {path}: {CHECKSUMS} is unreadable ({e})") from None
    for line in lines:
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            raise CheckpointError(
                f"checkpoint {path}: {CHECKSUMS} is corrupt ({line!r}). {DROP_HINT}"
            )
        sums[name] = digest
    return sums


def verify_file(path: Path, name: str, recorded, sums: dict[str, str] | None) -> None:
    """Check `path/name` against state.json's record (size and sha256; a bare size before
    format 2) and SHA256SUMS (absent before format 2)."""
    f = path / name
    if not f.is_file():
        raise missing_file(f)
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


def read_arrays(path: Path) -> dict[str, mx.array]:
    try:
        return mx.load(str(path))
    except (RuntimeError, ValueError, OSError) as e:
        msg = f"checkpoint {path.parent}: cannot read {path.name} ({e}); the file is corrupt"
        raise CheckpointError(f"{msg}. {DROP_HINT}") from None


def read_state(path: Path) -> tuple[dict, dict[str, str] | None]:
    """state.json, verified against SHA256SUMS, and SHA256SUMS (None: an unverifiable
    checkpoint written before format 2, loaded with a warning)."""
    sums = read_checksums(path)
    if sums is not None:
        verify_file(path, STATE_FILE, None, sums)
    state = read_json(path / STATE_FILE)
    if sums is None and state.get("format") is not None:
        raise CheckpointError(
            f"checkpoint {path}: missing {CHECKSUMS}; cannot verify it. {DROP_HINT}"
        )
    if sums is None:
        logger.warning(
            "checkpoint %s: written before checksums (no %s); its files are NOT verified. "
            "mlx_qat.checkpoint.seal_checkpoint(path) records them as they are now",
            path,
            CHECKSUMS,
        )
    return state, sums
