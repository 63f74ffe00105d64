"""Where an export may be written, what `--force` may replace, and stale temporaries.

Rules, checked before anything is loaded (`check_output`); each refusal is a `ConvertError`
naming the path and the fix:

* `--mlx-path` is never the current directory, one of its parents or the root (`.` included).
* It never overlaps an input: it is not the checkpoint or model read, the tokenizer shipped or
  the parity data, nor a parent of one of them, nor a folder inside one of them. (A folder
  inside the *run* directory, e.g. `runs/main/mlx_model`, is fine.)
* An existing `--mlx-path` is replaced only with `--force`, and only when it is recognisably a
  model directory that `mlx_qat.convert` or `mlx_lm.convert` wrote (`replace_refusal`): a real
  directory (not a symbolic link) holding `config.json` and `model*.safetensors` and nothing
  else than the files an export writes (`is_export_file`: weights, their index, `config.json`,
  `README.md`, `mlx_qat.json`, `convert.yaml`, tokenizer data files, `.DS_Store`): no
  subdirectory, no code (`*.py`), no other file. An empty directory may be replaced too.
* Its parent must be writable (a read-only directory is a one-line error, not a traceback).

Stale temporaries (`clean_stale`): an export is built as `<name>.tmp-<pid>` and an output it
replaces is moved to `<name>.old-<pid>` just before being removed. When the process that made
one no longer runs (pid not alive), the next convert into the same `--mlx-path` removes it, if
it holds only export files. A `.old-<pid>` is removed only when `<name>` exists again;
otherwise it is the previous output of an interrupted replace and is left (with a warning).
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

from .errors import ConvertError
from .tokenizer import is_tokenizer_file

logger = logging.getLogger(__name__)

EXPORT_FILES = frozenset(
    {
        "config.json",
        "model.safetensors",
        "model.safetensors.index.json",
        "README.md",
        "mlx_qat.json",
        "convert.yaml",
        ".DS_Store",  # Finder metadata, after a look at the folder on macOS
    }
)
WEIGHTS = "model*.safetensors"
SHARD = "model-*-of-*.safetensors"
PENDING_CONFIG = "config.unverified.json"  # config.json until the parity check passes
WRITE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)


def is_export_file(name: str) -> bool:
    """True for a file name `mlx_qat.convert` or `mlx_lm.convert` writes into a model dir."""
    return name in EXPORT_FILES or fnmatch.fnmatch(name, SHARD) or is_tokenizer_file(name)


def _unexpected(path: Path, staging: bool = False) -> list[str]:
    out = []
    for e in sorted(path.iterdir()):
        ok = is_export_file(e.name) or (staging and e.name == PENDING_CONFIG)
        if e.is_symlink() or not e.is_file() or not ok:
            out.append(e.name + ("/" if e.is_dir() and not e.is_symlink() else ""))
    return out


def replace_refusal(path: Path, staging: bool = False) -> str | None:
    """Why `--force` may not replace `path` (None: it may).

    `staging`: judge a build directory (`.tmp-<pid>`): no config.json or weights needed.
    """
    if path.is_symlink():
        return "it is a symbolic link"
    if not path.is_dir():
        return "it is a file, not a model directory"
    unexpected = _unexpected(path, staging)
    if unexpected:
        more = f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""
        return f"it holds {', '.join(unexpected[:5])}{more}, which no model export writes"
    names = [p.name for p in path.iterdir()]
    if staging or not names:
        return None
    if "config.json" not in names or not fnmatch.filter(names, WEIGHTS):
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
    """Refuse an output path that is the working directory, overlaps an input, exists (unless
    `force` and it is a replaceable model directory), or cannot be written.

    Args:
        final: `--mlx-path` as given.
        force: replace an existing model directory.
        inputs: what the export reads, by what to call it in a message ("the input": path);
            the output is neither one of them, nor above, nor inside one.
        around: inputs the output may sit inside but not replace or contain (a run directory:
            `runs/main/mlx_model` is fine, `runs/main` or `runs` is not).
        judge_force: check that `--force` may replace an existing output (off for the early
            check before the input is resolved, so that an output overlapping the input is
            named as such).
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
    check_writable(final)


def check_writable(final: Path) -> None:
    """Refuse an output whose directory cannot be created or written in."""
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


def write_error(final: Path, e: OSError) -> ConvertError:
    """A one-line `ConvertError` for an OSError met while writing the export."""
    return ConvertError(
        f"--mlx-path {final}: cannot write the export ({e.strerror or e}: "
        f"{e.filename or final}); nothing was published. Choose a --mlx-path in a writable "
        "directory with enough free space"
    )


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    except (OverflowError, ValueError):
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
        if m is None or int(m[2]) == os.getpid() or pid_alive(int(m[2])):
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
