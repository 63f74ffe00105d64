"""Where an export may go, and writing it there atomically as an mlx-lm model directory.

Rules, checked before anything is loaded (`check_output`); each refusal names the path and fix:

* `--mlx-path` is never the current directory, one of its parents or the root (`.` included).
* It never overlaps an input: it is not the checkpoint or model read, the tokenizer shipped or
  the parity data, nor a parent of one of them, nor a folder inside one of them. (A folder
  inside the *run* directory, e.g. `runs/main/mlx_model`, is fine.)
* An existing `--mlx-path` is replaced only with `--force`, and only when it is recognisably a
  model directory that `mlx_qat.convert` or `mlx_lm.convert` wrote (`replace_refusal`): a real
  directory (not a symbolic link) holding `config.json`, `model*.safetensors` and only files an
  export writes (`is_export_file`): no subdirectory, no code (`*.py`). An empty one may go too.
* Its parent must be writable (a read-only directory is a one-line error, not a traceback).

mlx-lm writes the files (`save_model` / `save_config`: weights in shards of at most 5 GB with
their index; `config.json` sorted, `"quantization"` mirrored into `"quantization_config"`).
`staged_dir` builds everything under `<mlx_path>.tmp-<pid>` and renames it into place only when
the block finishes without error; an output it replaces is moved to `<mlx_path>.old-<pid>` and
removed after that rename. `config.json` is written as `config.unverified.json` and renamed
(`commit_config`) only once the parity check has passed, so no directory that `mlx_lm.load`
accepts exists before the export is verified, not even the temporary one of a killed process.

Stale temporaries (`clean_stale`): a `.tmp-<pid>` or `.old-<pid>` whose process no longer runs
is removed by the next convert into the same `--mlx-path` if it holds only export files; a
`.old-<pid>` only once `<name>` exists again (else it is the previous output of an interrupted
replace, left with a warning).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import mlx.nn as nn

from ..fileio import fsync_path, new_tmp_dir
from .errors import ConvertError
from .tokenizer import is_tokenizer_file

logger = logging.getLogger(__name__)

INDEX = "model.safetensors.index.json"
CONFIG = "config.json"
RESULT_FILE = "mlx_qat.json"
# .DS_Store: Finder metadata, after a look at the folder on macOS
EXPORT_FILES = frozenset(
    {CONFIG, "model.safetensors", INDEX, "README.md", RESULT_FILE, "convert.yaml", ".DS_Store"}
)
WEIGHTS = "model*.safetensors"
SHARD = "model-*-of-*.safetensors"
PENDING_CONFIG = "config.unverified.json"  # config.json until the parity check passes
WRITE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)


def is_export_file(name: str) -> bool:
    """True for a file name `mlx_qat.convert` or `mlx_lm.convert` writes into a model dir."""
    return name in EXPORT_FILES or fnmatch.fnmatch(name, SHARD) or is_tokenizer_file(name)


def replace_refusal(path: Path, staging: bool = False) -> str | None:
    """Why `--force` may not replace `path` (None: it may).

    `staging`: judge a build directory (`.tmp-<pid>`): no config.json or weights needed.
    """
    if path.is_symlink():
        return "it is a symbolic link"
    if not path.is_dir():
        return "it is a file, not a model directory"
    unexpected = []
    for e in sorted(path.iterdir()):
        ok = is_export_file(e.name) or (staging and e.name == PENDING_CONFIG)
        if e.is_symlink() or not e.is_file() or not ok:
            unexpected.append(e.name + ("/" if e.is_dir() and not e.is_symlink() else ""))
    if unexpected:
        more = f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""
        return f"it holds {', '.join(unexpected[:5])}{more}, which no model export writes"
    names = [p.name for p in path.iterdir()]
    if staging or not names:
        return None
    if CONFIG not in names or not fnmatch.filter(names, WEIGHTS):
        return "it has no config.json with model*.safetensors, so it is not a model directory"
    return None


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_output(
    final: Path,
    force: bool,
    inputs: Mapping[str, Path | str | None] | None = None,
    around: Mapping[str, Path | str | None] | None = None,
    judge_force: bool = True,
) -> None:
    """Refuse an output path that breaks the rules of the module docstring.

    `inputs` ({"the input": path, ...}): the output is neither one of them, nor above, nor inside
    one; `around`: inputs it may sit inside (a run directory). `judge_force=False` skips judging
    what `--force` would replace (the early check, so an overlap is named as such).
    """
    final = Path(final).expanduser()
    dst = final.resolve()
    cwd = Path.cwd().resolve()
    if _is_within(cwd, dst):
        what = "the current directory" if dst == cwd else "a parent of the current directory"
        raise ConvertError(
            f"--mlx-path {final} is {what}; the export is a directory of its own, which "
            "--force would replace: give it a new name, e.g. --mlx-path mlx_model"
        )
    checks = [(k, v, True) for k, v in (inputs or {}).items()]
    checks += [(k, v, False) for k, v in (around or {}).items()]
    for what, path, inside_too in checks:
        if path is None:
            continue
        src = Path(path).expanduser().resolve()
        if _is_within(src, dst) or (inside_too and _is_within(dst, src)):
            raise ConvertError(
                f"--mlx-path {final} overlaps {what} {path}; writing there could delete or "
                "change what the export reads: choose another output path"
            )
    if final.exists() or final.is_symlink():
        if not force:
            raise ConvertError(
                f"{final} already exists; pass --force to replace it or choose another --mlx-path"
            )
        why = replace_refusal(final) if judge_force else None
        if why is not None:
            raise ConvertError(
                f"--mlx-path {final}: --force replaces only a model directory written by "
                f"mlx_qat.convert or mlx_lm.convert, and {why}. Nothing was deleted; move it "
                "away or choose another --mlx-path"
            )
    parent = Path(os.path.abspath(final)).parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConvertError(f"--mlx-path {final}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConvertError(
            f"--mlx-path {final}: cannot write in {parent} (permission denied or read-only); "
            "choose a --mlx-path in a directory you can write to"
        )


def _write_error(final: Path, e: OSError) -> ConvertError:
    return ConvertError(
        f"--mlx-path {final}: cannot write the export ({e.strerror or e}: "
        f"{e.filename or final}); nothing was published. Choose a --mlx-path in a writable "
        "directory with enough free space"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True  # someone else's process
    except (ProcessLookupError, OverflowError, ValueError):
        return False
    return True


def clean_stale(final: Path) -> list[Path]:
    """Remove `<final>.tmp-<pid>` / `.old-<pid>` left by convert processes that no longer
    run (see the module docstring); returns what was removed."""
    final = Path(os.path.abspath(Path(final).expanduser()))
    if not final.parent.is_dir():
        return []
    pattern = re.compile(re.escape(final.name) + r"\.(tmp|old)-(\d+)")
    removed = []
    for p in sorted(final.parent.iterdir()):
        m = pattern.fullmatch(p.name)
        if m is None or int(m[2]) == os.getpid() or _pid_alive(int(m[2])):
            continue
        if m[1] == "old" and not final.exists():
            logger.warning(
                "%s is the previous output of an interrupted convert (process %s); rename it "
                "to %s to keep it, or delete it",
                p,
                m[2],
                final.name,
            )
            continue
        why = replace_refusal(p, staging=m[1] == "tmp")
        if why is not None:
            logger.warning("left %s in place (%s)", p, why)
            continue
        shutil.rmtree(p)
        logger.info("removed %s, left by convert process %s that no longer runs", p, m[2])
        removed.append(p)
    return removed


@contextlib.contextmanager
def staged_dir(final: Path, force: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces `final`, on error it is removed.

    Stale temporaries beside `final` are removed before and after (`clean_stale`). An OSError
    from writing (permission, read-only or full disk) becomes a one-line `ConvertError`.
    """
    final = Path(final).expanduser()
    check_output(final, force)
    clean_stale(final)
    try:
        tmp = new_tmp_dir(final)  # beside `final`: the same file system
    except OSError as e:
        raise (_write_error(final, e) if e.errno in WRITE_ERRNOS else e) from e
    try:
        yield tmp
        for p in tmp.iterdir():
            if p.is_file():
                fsync_path(p)
        fsync_path(tmp)
        _publish(tmp, final, force)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and _writing(e, tmp):
            raise _write_error(final, e) from e
        raise
    clean_stale(final)  # an `.old-<pid>` of an interrupted replace is superseded now


def _writing(e: OSError, tmp: Path) -> bool:
    # A write error in the output's directory, not a read error of some input.
    where = os.path.abspath(e.filename) if e.filename else ""
    return e.errno in WRITE_ERRNOS and where.startswith(os.path.abspath(tmp.parent))


def _publish(tmp: Path, final: Path, force: bool) -> None:
    old = None
    if final.exists() or final.is_symlink():
        # Checked again: the directory may have changed since the export started.
        why = "--force was not given" if not force else replace_refusal(final)
        if why is not None:
            raise ConvertError(
                f"--mlx-path {final} appeared or changed while converting and {why}; "
                "nothing was replaced. Choose another --mlx-path"
            )
        # Move the old output aside first: os.replace cannot replace a non-empty directory.
        old = final.with_name(f"{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_path(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_weights(path: Path, model: nn.Module, donate: bool = False) -> tuple[int, int, dict]:
    """Save `model.parameters()` with mlx-lm's `save_model` (shards + index); return the number
    of parameters, the bytes and {file: bytes} of the weight files written.

    `donate`: mlx-lm frees the model's arrays as it writes them (the model is unusable after).
    """
    from mlx_lm.utils import save_model

    save_model(path, model, donate_model=donate)
    meta = json.loads((path / INDEX).read_text(encoding="utf-8"))["metadata"]
    files = {p.name: p.stat().st_size for p in sorted(path.glob(WEIGHTS))}
    return int(meta["total_parameters"]), int(meta["total_size"]), files


def save_config(path: Path, config: dict, pending: bool = False) -> None:
    """mlx-lm's `save_config`; `pending`: as `config.unverified.json`, for `commit_config`."""
    from mlx_lm.utils import save_config as _save_config

    _save_config(dict(config), config_path=path / (PENDING_CONFIG if pending else CONFIG))


def commit_config(path: Path) -> None:
    """Rename the verified `config.unverified.json` to `config.json`: now mlx-lm loads it."""
    os.replace(path / PENDING_CONFIG, path / CONFIG)


def write_result(path: Path, card: str, result: dict) -> None:
    """The model card (README.md) and what the export measured (`RESULT_FILE`)."""
    (path / "README.md").write_text(card, encoding="utf-8")
    (path / RESULT_FILE).write_text(json.dumps(result, indent=2), encoding="utf-8")
