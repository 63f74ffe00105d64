"""A sweep's folder: one sweep writes it at a time (a lock), and it holds one sweep (a check).

**Lock.** A sweep writing `<out>` (a shard: `<out>/shard-i-of-n/`) holds an exclusive
`fcntl.flock` on `sweep.lock` there, whose text names the holder (PID, host, start, command):
two sweeps on a folder would train every run twice. A shard also holds a shared lock on
`<out>/sweep.lock`, so shards run side by side but not beside an unsplit sweep. The kernel
drops a flock when its process ends (`kill -9` too): a `sweep.lock` still naming a PID was
left by a sweep that died, and the next one takes it over, saying so. The lock is re-entrant
within a process; a file system without flock gets a warning and no lock.

**One sweep per folder.** `check_same_sweep` refuses, before anything is written, a folder
whose `grid.yaml` (the sweep file copied there) is another study: other data, or `train:`
settings that change what is trained or how rows are measured (the config hash's settings,
`final_eval_batches`; `fp_twins` turned on over rows without twins), or whose rows were trained
on other data than `data:` holds now (`DataBundle.identity`). A changed grid is the same study:
a run's name spells its grid point, so the runs that still match keep their rows.
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import socket
import sys
from contextlib import contextmanager
from pathlib import Path

import yaml

from ..fileio import read_json_object
from ..train.config import DATA_FIELDS, TrainConfig
from .grid import Sweep
from .results import read_rows
from .shard import RESULTS, Shard

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None

logger = logging.getLogger(__name__)

LOCK = "sweep.lock"
GRID = "grid.yaml"
# Not in the config hash, but in how a row is measured: rows differing here do not compare.
MEASURED = ("final_eval_batches",)

_held: dict[str, int] = {}  # folders this process has locked, and how many times
# flock errors of a file system that has no locks (some network mounts)
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL}


class FolderBusy(RuntimeError):
    """Another sweep is writing this folder."""


def _holder() -> str:
    return json.dumps(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join([_program(), *sys.argv[1:]]),
        }
    )


def _program() -> str:
    arg0 = Path(sys.argv[0] if sys.argv and sys.argv[0] else "python")
    return f"python -m {arg0.parent.name}" if arg0.name == "__main__.py" else arg0.name


def _read(path: Path) -> dict | None:
    h = read_json_object(path)
    return h if h is not None and "pid" in h else None


def _alive(h: dict) -> bool:
    """Whether the holder `h` may still run (always, on another host: it cannot be asked)."""
    if h.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(h["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True
    return True


def _describe(h: dict) -> str:
    return f"PID {h.get('pid')} on {h.get('host')}, since {h.get('started')}: {h.get('command')}"


def _busy(folder: Path, holders: list[dict | None]) -> FolderBusy:
    live = [h for h in holders if h and _alive(h)]
    who = "; ".join(_describe(h) for h in live) or "a sweep that has not written its PID yet"
    pids = " ".join(str(h.get("pid")) for h in live)
    stop = f" or stop it (kill {pids})" if pids else ""
    return FolderBusy(
        f"{folder}: another sweep is writing this folder ({who}); two sweeps on one folder "
        f"would train every run twice. Wait for it to finish{stop}, then run this again"
    )


def _open_locked(path: Path, exclusive: bool) -> int | None:
    """A descriptor of `path` holding the lock, or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _acquire(out: Path, where: Path, shard: Shard | None) -> list[int]:
    fds: list[int] = []
    try:
        if shard:  # shared with the other shards, exclusive of an unsplit sweep
            fd = _open_locked(out / LOCK, exclusive=False)
            if fd is None:
                raise _busy(out, [_read(out / LOCK)])
            fds.append(fd)
        fd = _open_locked(where / LOCK, exclusive=True)
        if fd is None:
            shards = [] if shard else sorted(out.glob(f"shard-*-of-*/{LOCK}"))
            raise _busy(where, [_read(where / LOCK)] + [_read(p) for p in shards])
        fds.append(fd)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


@contextmanager
def lock_folder(out: str | os.PathLike, shard: Shard | None = None):
    """Hold the lock of sweep folder `out` (of `shard`'s folder in it) for the `with` block;
    FolderBusy naming the holder when another sweep writes the folder."""
    out = Path(out)
    where = shard.dir(out) if shard else out
    where.mkdir(parents=True, exist_ok=True)
    key = str(where.resolve())
    if key in _held:  # this process holds it already (the CLI around run_sweep)
        _held[key] += 1
        try:
            yield where
        finally:
            _held[key] -= 1
        return
    fds: list[int] = []
    if fcntl is None:
        logger.warning("%s: no file locks on this system: another sweep is not kept out", where)
    else:
        try:
            fds = _acquire(out, where, shard)
        except OSError as e:
            if e.errno not in _NO_FLOCK:
                raise
            logger.warning("%s: cannot lock %s (%s): another sweep is not kept out", where, LOCK, e)
    if fds:
        left = _read(where / LOCK)
        if left:
            logger.warning(
                "%s: taking over the lock of %s: that sweep ended without releasing it "
                "(it was stopped or killed)",
                where,
                _describe(left),
            )
        os.ftruncate(fds[-1], 0)
        os.pwrite(fds[-1], _holder().encode(), 0)
        os.fsync(fds[-1])
    _held[key] = 1
    try:
        yield where
    finally:
        del _held[key]
        if fds:
            os.ftruncate(fds[-1], 0)  # released cleanly: the next sweep has nothing to take over
        for fd in fds:
            os.close(fd)  # closing drops the flock


def _train_config(train: dict) -> TrainConfig | None:
    try:
        return TrainConfig.from_dict(train)
    except (TypeError, ValueError):
        return None


def _bundle(data: str, attr: str):
    """An attribute of the prepared data at `data`; None for raw text, or none there."""
    from ..data.shards import load_bundle

    try:
        return getattr(load_bundle(data), attr)
    except (OSError, ValueError, KeyError):
        return None


def _same_data(a: str, b: str) -> bool:
    if os.path.normpath(a) == os.path.normpath(b) or Path(a).resolve() == Path(b).resolve():
        return True
    key = (_bundle(a, "manifest") or {}).get("key")
    return key is not None and key == (_bundle(b, "manifest") or {}).get("key")


def _differences(old: dict, sweep: Sweep) -> list[str]:
    """What makes the sweep file `old` (a parsed grid.yaml) another study than `sweep`."""
    out = []
    if not _same_data(str(old.get("data")), sweep.data):
        out.append(f"data: {old.get('data')} there, {sweep.data} here")
    if sweep.fp_twins and not old.get("fp_twins"):  # its rows would count as done, twinless
        out.append("fp_twins: false there, true here")
    train = {str(k).replace("-", "_"): v for k, v in (old.get("train") or {}).items()}
    a, b = _train_config(train), _train_config(sweep.train)
    if a is None or b is None:  # an old file this version cannot read: compare as written
        keys = sorted(
            k for k in set(train) | set(sweep.train) if train.get(k) != sweep.train.get(k)
        )
        return out + [
            f"train: {k}: {train.get(k)!r} there, {sweep.train.get(k)!r} here" for k in keys
        ]
    da, db = a.to_dict(), b.to_dict()
    if a.hash(exclude=DATA_FIELDS) != b.hash(exclude=DATA_FIELDS) or any(
        da[k] != db[k] for k in MEASURED
    ):
        keys = sorted(k for k in da if da[k] != db[k] and k not in DATA_FIELDS)
        out += [f"train: {k}: {da[k]!r} there, {db[k]!r} here" for k in keys]
    return out


def _check_rows_data(sweep: Sweep, out: Path) -> None:
    now = _bundle(sweep.data, "identity")
    if now is None:
        return
    for path in [out / RESULTS, *sorted(out.glob(f"shard-*-of-*/{RESULTS}"))]:
        for row in read_rows(path):
            was = row.get("data")
            if was and was != now:
                raise ValueError(
                    f"{path}: its rows were trained on other data (shards key "
                    f"{str(was.get('shards_key'))[:16]}, tokenizer sha256 "
                    f"{str(was.get('tokenizer_sha256'))[:16]}) than {sweep.data} holds now "
                    f"(shards key {str(now['shards_key'])[:16]}, tokenizer sha256 "
                    f"{now['tokenizer_sha256'][:16]}): was it prepared again? The folder's rows "
                    f"would mix two data sets. Give {sweep.source} its own out:, or prepare "
                    f"the rows' data again at {sweep.data}"
                )


def check_same_sweep(sweep: Sweep) -> None:
    """ValueError, naming the file and what differs, when `sweep.out` (or a shard folder in it)
    holds another study (module docstring); nothing is written."""
    out = Path(sweep.out)
    _check_rows_data(sweep, out)
    for path in [out / GRID, *sorted(out.glob(f"shard-*-of-*/{GRID}"))]:
        if not path.is_file():
            continue
        try:
            old = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"{path}: cannot read it ({e}); is {out} a sweep folder?") from None
        diff = _differences(old if isinstance(old, dict) else {}, sweep)
        if diff:
            raise ValueError(
                f"{out} holds another sweep ({path}; {'; '.join(diff)}): its rows and this "
                f"sweep's would mix in one folder. Give {sweep.source} its own out:, or delete "
                f"{out} to start over"
            )
