"""What every verb shares: its settings (`settings`), logging, the OpenBLAS re-exec, and
errors as one line + exit code.

A verb module (`mlx_qat.cli.<verb>`) has `build_parser()` and `main(argv=None) -> int`; its
`main` is `run_verb(NAME, build_parser, body, argv)`, and `body(opts)` does the work with the
resolved settings (a dict keyed by the parser's `dest` names) and returns the exit status.

Errors (`run_verb`): bad input (ValueError and its subclasses, which every validation raises;
OSError; RuntimeError, which MLX raises for memory and shapes it cannot handle) is one line,
`mlx_qat.<verb>: error: ...`, exit 1. Any other exception is a bug in mlx_qat: its message,
where it was raised, and the full traceback in a crash file (`crash_dir()`), exit 1. `--debug`
on every verb, or `MLX_QAT_DEBUG=1`, lets every exception propagate with its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from ..fileio import atomic_write_text, cache_dir
from .settings import (
    CONFIGS,
    HelpFormatter,
    accept_in_yaml,
    add_common,
    add_config,
    add_renamed,
    config_file,
    resolve,
    save_resolved,
    shipped_configs,
)

__all__ = [  # the settings' names, imported from here by the verbs
    "CONFIGS",
    "HelpFormatter",
    "accept_in_yaml",
    "add_common",
    "add_config",
    "add_renamed",
    "config_file",
    "debugging",
    "resolve",
    "run_verb",
    "save_resolved",
    "setup_logging",
    "shipped_configs",
]

DEBUG_ENV = "MLX_QAT_DEBUG"
# Bad input, reported in one line: what our validation raises (ValueError and its subclasses:
# ConvertError, CheckpointError, ...), I/O errors, and MLX's RuntimeErrors (memory, shapes).
USER_ERRORS = (ValueError, OSError, RuntimeError, MemoryError)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time (it may be swapped, e.g. by pytest)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(quiet: bool, fmt: str = "%(message)s", quiet_level: int = logging.WARNING):
    """mlx_qat's loggers to stderr in `fmt`: INFO, or `quiet_level` when quiet. One handler,
    however many verbs run in the process (a second call only changes format and level)."""
    log = logging.getLogger("mlx_qat")
    handler = next((h for h in log.handlers if getattr(h, "_mlx_qat", False)), None)
    if handler is None:
        handler = _StderrHandler()
        handler._mlx_qat = True  # type: ignore[attr-defined]
        log.addHandler(handler)
    handler.setFormatter(logging.Formatter(fmt))
    log.setLevel(quiet_level if quiet else logging.INFO)


def debugging(opts: dict | None = None) -> bool:
    """True with `--debug` (in `opts`) or `MLX_QAT_DEBUG` set to anything but "", "0"."""
    return bool((opts or {}).get("debug")) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def crash_dir() -> Path:
    """Where crash reports go: `<cache>/crashes` (`$MLX_QAT_CACHE`, `$XDG_CACHE_HOME/mlx_qat`
    or `~/.cache/mlx_qat`)."""
    return cache_dir() / "crashes"


def write_crash_report(verb: str, argv: list[str], exc: BaseException) -> Path:
    """The command, versions and full traceback of `exc`, in a new file under `crash_dir()`."""
    from importlib.metadata import PackageNotFoundError, version

    def ver(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = crash_dir() / f"{verb}-{stamp}-{os.getpid()}.txt"
    text = (
        f"command: mlx_qat.{verb} {' '.join(argv)}\n"
        f"cwd: {os.getcwd()}\n"
        f"mlx_qat {ver('mlx_qat')}, mlx {ver('mlx')}, mlx-lm {ver('mlx-lm')}, "
        f"Python {platform.python_version()}, {platform.platform()}\n\n"
        + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    return path


def report_bug(verb: str, argv: list[str], exc: BaseException) -> None:
    """Print an unexpected exception as a bug: its message, where it was raised, and where its
    traceback was saved (the traceback itself when it cannot be saved)."""
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    lines = [
        f"mlx_qat.{verb}: internal error: {type(exc).__name__}: {exc}",
        f"  raised at {frame.filename}:{frame.lineno} in {frame.name}",
    ]
    try:
        path = write_crash_report(verb, argv, exc)
        lines += [
            f"This is a bug in mlx_qat, not in your input. Its full traceback is in {path}:",
            "please report it with that file. Rerun with --debug (or MLX_QAT_DEBUG=1) to see "
            "the traceback here.",
        ]
    except OSError as e:
        lines += [
            f"This is a bug in mlx_qat, not in your input (could not save its traceback: {e});",
            "please report it with this traceback:",
            "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip(),
        ]
    print("\n".join(lines), file=sys.stderr)


def run_verb(
    verb: str,
    build_parser: Callable[[], argparse.ArgumentParser],
    body: Callable[[dict], int],
    argv: list[str] | None,
    log_format: str = "%(message)s",
) -> int:
    """Run one verb: re-exec with OpenBLAS (console script only), resolve the settings, set up
    logging once, call `body(opts)`. Bad input (`USER_ERRORS`) becomes `mlx_qat.<verb>: error:
    ...` and exit 1 (argparse's own usage errors and bad `--config` settings exit 2); any other
    exception is reported as a bug (`report_bug`), exit 1. With `--debug` (added to every
    verb's parser here) or `MLX_QAT_DEBUG=1`, every exception propagates with its traceback."""
    if argv is None:  # a console script: argv is ours to re-exec with
        from ..blas import reexec_with_openblas

        reexec_with_openblas(["-m", "mlx_qat", verb, *sys.argv[1:]])
        argv = sys.argv[1:]
    argv = list(argv)
    parser = build_parser()
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"on any error, raise it with its full traceback (or set {DEBUG_ENV}=1)",
    )
    try:
        opts = resolve(parser, argv)
    except ValueError as e:
        if "--debug" in argv or debugging():
            raise
        parser.error(str(e))
    setup_logging(bool(opts.get("quiet")), log_format)
    try:
        return int(body(opts))
    except KeyboardInterrupt:
        if debugging(opts):
            raise
        print(f"mlx_qat.{verb}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debugging(opts):
            raise
        if isinstance(e, USER_ERRORS):
            print(f"mlx_qat.{verb}: error: {e}", file=sys.stderr)
        else:
            report_bug(verb, argv, e)
        return 1
