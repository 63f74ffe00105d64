"""File-system helpers: atomic writes, directory publishing, hashing, the cache dir.

Every file mlx_qat writes that a user could lose goes through :func:`atomic_write_bytes` (a
``name.tmp-<pid>`` beside it, fsync, ``os.replace``) or is built inside a temporary directory
that :func:`building_dir` renames into place, so an interrupted run never leaves a half-written
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
from typing import Any, NamedTuple

CACHE_ENV = "MLX_QAT_CACHE"


def cache_dir() -> Path:
    """``$MLX_QAT_CACHE``, else ``$XDG_CACHE_HOME/mlx_qat``, else ``~/.cache/mlx_qat``."""
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
    """Write ``path`` atomically (module header); on error ``path`` is left untouched."""
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
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def new_tmp_dir(final: Path) -> Path:
    """Create (empty) the temporary build directory for ``final``: ``final.tmp-<pid>``."""
    tmp = tmp_name(final)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


@contextlib.contextmanager
def building_dir(final: Path, replace: bool = False) -> Iterator[Path]:
    """Yield a fresh `new_tmp_dir` for `final`, renamed onto `final` when the block ends without
    error (on error it is removed). An existing `final` (another process finished first) wins,
    the build is discarded, unless `replace`: then the old directory is moved aside and removed."""
    tmp = new_tmp_dir(final)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_path(tmp)
    if final.exists():
        if not replace:
            shutil.rmtree(tmp, ignore_errors=True)
            return
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
            return
    fsync_path(final.parent)


def remove_aside(path: Path) -> None:
    """Delete a file or directory, renamed to `<name>.tmp-del-<pid>` first so that a
    half-deleted one never looks complete."""
    doomed = path.with_name(f"{path.name}.tmp-del-{os.getpid()}")
    os.replace(path, doomed)
    if doomed.is_dir() and not doomed.is_symlink():
        shutil.rmtree(doomed, ignore_errors=True)
    else:
        doomed.unlink()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex sha256 of ``obj`` serialised as canonical JSON (sorted keys)."""
    data = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(data.encode("ascii")).hexdigest()


def ensure_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """Create directory `path` and prove it writable with a probe file, before any work that
    would be lost; a failure is a ValueError naming `what` (e.g. "--out runs/x") and the fix."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = tmp_name(p / ".write-test")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(
            f"{what}: cannot write there ({e.strerror or e}); choose a writable directory"
        ) from None
    return p


def read_json_object(path: str | os.PathLike) -> dict | None:
    """The JSON object in `path`; None when it is missing, unreadable or not an object."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


class JsonLines(NamedTuple):
    """`read_jsonl`'s answer."""

    rows: list[tuple[int, Any]]  # (line number, object)
    torn: bool


def read_jsonl(path: str | os.PathLike) -> JsonLines:
    """The complete JSON lines of `path` (none if it does not exist). A last line without its
    newline (a killed appender's) is never parsed, only reported as `torn`; any other line
    that is not JSON, or a file that is not UTF-8 text, is a ValueError naming it."""
    p = Path(path)
    if not p.is_file():
        return JsonLines([], False)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:  # a binary file given where JSON lines belong
        raise ValueError(
            f"{p}: not a JSON lines file (byte {e.start} is not UTF-8 text); give a .jsonl file"
        ) from None
    *lines, tail = text.split("\n")
    rows = []
    for i, line in enumerate(lines, 1):
        if line.strip():
            try:
                rows.append((i, json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}:{i}: not a JSON row ({e.msg})") from None
    return JsonLines(rows, bool(tail.strip()))


def read_rows(path: str | os.PathLike) -> list:
    """The objects of `read_jsonl(path)` (a torn last line is skipped)."""
    return [row for _, row in read_jsonl(path).rows]


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one JSON line atomically: one `os.write` on an O_APPEND descriptor, then fsync
    (a torn last line a kill left is cut off first, never glued to a row)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(obj, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size:
            os.lseek(fd, size - 1, os.SEEK_SET)
            if os.read(fd, 1) != b"\n":  # a torn line from a killed writer: drop it
                os.ftruncate(fd, p.read_bytes().rfind(b"\n") + 1)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
