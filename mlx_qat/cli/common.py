"""What every verb shares: settings from flags and `--config` YAML, logging, the OpenBLAS
re-exec, the resolved settings saved next to the output, and errors as one line + exit code.

A verb module (`mlx_qat.cli.<verb>`) has `build_parser()` and `main(argv=None) -> int`; its
`main` is `run_verb(NAME, build_parser, body, argv)`, and `body(opts)` does the work with the
resolved settings (a dict keyed by the parser's `dest` names) and returns the exit status.

Precedence is CLI > YAML > defaults, as in `mlx_lm.lora`: every flag is parsed with the default
None (= not given), YAML values fill what the command line left out, and the parser's declared
defaults fill the rest. YAML keys may use `-` or `_`; an unknown key is an error naming it, and
every value is coerced with the flag's own `type` (PyYAML reads `1e-3` as a string) and checked
against its `choices`, so a bad value fails before anything runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ..fileio import atomic_write_text

# Flags that steer the command itself, not its result: never saved in the resolved settings.
NOT_SAVED = ("config", "quiet", "force", "help")


def add_common(parser: argparse.ArgumentParser) -> None:
    """`--config FILE.yaml` and `--quiet`, which every verb takes."""
    parser.add_argument(
        "--config", metavar="FILE.yaml", help="read settings from a YAML file (CLI flags win)"
    )
    parser.add_argument("--quiet", action="store_true", help="print only results and errors")


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    # argparse has no public accessor for its actions; this is the one place that reads them.
    return {a.dest: a for a in parser._actions if a.dest != "help"}  # noqa: SLF001


def _coerce(action: argparse.Action, key: str, value: Any, where: str) -> Any:
    """A YAML value converted as the flag would convert its text."""
    flag = "--" + key.replace("_", "-")

    def bad(why: str) -> ValueError:
        return ValueError(f"{where}: {key}: {value!r} {why} (the flag is {flag})")

    if value is None:
        return None
    if action.nargs == 0:  # store_true / BooleanOptionalAction
        if isinstance(value, bool):
            return value
        raise bad("is not true or false")
    if isinstance(value, dict) and getattr(action.type, "accepts_mapping", False):
        # a mapping for a KEY=VALUE list flag (--quant-overrides): one item per entry
        value = [f"{k}={json.dumps(v)}" for k, v in value.items()]
    if action.nargs in ("+", "*"):
        items = value if isinstance(value, list) else [value]
        return [_coerce_one(action, key, v, bad) for v in items]
    if isinstance(value, (list, dict)):
        raise bad("must be a single value")
    return _coerce_one(action, key, value, bad)


def _coerce_one(action, key, value, bad):
    if isinstance(value, bool) and action.type not in (None, str):
        raise bad("is a boolean")
    if action.type is not None:
        try:
            value = action.type(str(value) if not isinstance(value, str) else value)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
            raise bad(f"is not valid: {e}") from None
    elif not isinstance(value, str):
        value = str(value)
    if action.choices is not None and value not in action.choices:
        raise bad(f"is not one of {', '.join(map(str, action.choices))}")
    return value


def load_yaml(path: str | Path) -> dict:
    """The mapping in a YAML settings file, keys normalised to `snake_case`."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"--config {path}: cannot read it ({e})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(
            f"--config {path}: must hold a mapping of setting: value, not a {type(raw).__name__}"
        )
    return {str(k).replace("-", "_"): v for k, v in raw.items()}


def resolve(parser: argparse.ArgumentParser, argv: list[str] | None) -> dict:
    """Parse `argv` and merge: CLI > `--config` YAML > the parser's defaults.

    Raises ValueError naming the key for an unknown YAML key or a value of the wrong type.
    """
    actions = _options(parser)
    defaults = {dest: a.default for dest, a in actions.items()}
    parser.set_defaults(**{dest: None for dest in actions})
    try:
        given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    finally:
        parser.set_defaults(**defaults)
    merged = {k: v for k, v in defaults.items() if v is not argparse.SUPPRESS}
    path = given.pop("config", None)
    if path is not None:
        loaded = load_yaml(path)
        known = sorted(set(actions) - {"config"})
        unknown = sorted(set(loaded) - set(known))
        if unknown:
            raise ValueError(
                f"--config {path}: unknown setting(s) {', '.join(unknown)}; known: "
                f"{', '.join(known)}"
            )
        for key, value in loaded.items():
            merged[key] = _coerce(actions[key], key, value, f"--config {path}")
        merged["config"] = str(path)
    merged.update(given)
    return merged


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


def save_resolved(path: str | Path, verb: str, opts: dict) -> Path:
    """Write the resolved settings as YAML at `path` (atomically); returns the path.

    The file feeds back unchanged: `mlx_qat.<verb> --config PATH` repeats the command.
    """
    kept = {k: v for k, v in opts.items() if k not in NOT_SAVED}
    text = f"# mlx_qat.{verb} resolved settings (CLI > --config YAML > defaults)\n"
    atomic_write_text(Path(path), text + yaml.safe_dump(kept, sort_keys=False))
    return Path(path)


def run_verb(
    verb: str,
    build_parser: Callable[[], argparse.ArgumentParser],
    body: Callable[[dict], int],
    argv: list[str] | None,
    log_format: str = "%(message)s",
) -> int:
    """Run one verb: re-exec with OpenBLAS (console script only), resolve the settings, set up
    logging once, call `body(opts)`; bad input and I/O errors become `mlx_qat.<verb>: error:
    ...` and exit 1 (argparse's own usage errors exit 2). RuntimeError counts as bad input
    too: MLX raises it for shapes and memory it cannot handle."""
    if argv is None:  # a console script: argv is ours to re-exec with
        from ..blas import reexec_with_openblas

        reexec_with_openblas(["-m", "mlx_qat", verb, *sys.argv[1:]])
        argv = sys.argv[1:]
    parser = build_parser()
    try:
        opts = resolve(parser, list(argv))
    except ValueError as e:
        parser.error(str(e))
    setup_logging(bool(opts.get("quiet")), log_format)
    try:
        return int(body(opts))
    except (ValueError, OSError, RuntimeError) as e:
        print(f"mlx_qat.{verb}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mlx_qat.{verb}: interrupted", file=sys.stderr)
        return 130
