"""File-system helpers: atomic writes, directory publishing, hashing, the cache dir.

Every file mlx_qat writes that a user could lose goes through :func:`atomic_write_bytes` (a
``name.tmp-<pid>`` beside it, fsync, ``os.replace``) or is built inside a temporary directory
that :func:`publish_dir` renames into place, so an interrupted run never leaves a half-written
artifact under its final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CACHE_ENV = "MLX_QAT_CACHE"


def cache_dir() -> Path:
    """The user cache directory: ``$MLX_QAT_CACHE``, else ``$XDG_CACHE_HOME/mlx_qat``,
    else ``~/.cache/mlx_qat``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "mlx_qat"


def tmp_name(path: Path) -> Path:
    """``name.tmp-<pid>`` beside ``path`` (same directory, so ``os.replace`` is atomic)."""
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a directory (a directory: so that a rename inside it is durable)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open ``path.tmp-<pid>`` for writing; on success fsync it and ``os.replace`` it onto
    ``path``. On error the temporary file is removed and ``path`` is left untouched."""
    path = Path(path)
    tmp = tmp_name(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_path(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same dir, fsync, rename)."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def new_tmp_dir(final: Path) -> Path:
    """Create (empty) the temporary build directory for ``final``: ``final.tmp-<pid>``."""
    tmp = tmp_name(final)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def publish_dir(tmp: Path, final: Path, replace: bool = False) -> bool:
    """Rename the finished build directory ``tmp`` onto ``final``.

    If ``final`` already exists (another process finished first) the build is discarded and
    False is returned, unless ``replace`` is set, in which case the old directory is moved aside
    and removed. Returns True when ``tmp`` became ``final``.
    """
    fsync_path(tmp)
    if final.exists():
        if not replace:
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        old = final.with_name(f"{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return False
    fsync_path(final.parent)
    return True


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex sha256 of ``obj`` serialised as canonical JSON (sorted keys)."""
    data = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(data.encode("ascii")).hexdigest()
