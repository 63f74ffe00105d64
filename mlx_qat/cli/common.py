"""What every verb shares: its settings (flags, `--config` YAML, the resolved settings saved
beside the output), logging, the OpenBLAS re-exec, and errors as one line + exit code.

A verb module (`mlx_qat.cli.<verb>`) has `build_parser()` and `main(argv=None) -> int`
(`verb_main`: `run_verb(NAME, build_parser, body, argv)`), and `body(opts)` does the work with
the resolved settings (a dict keyed by the parser's `dest` names) and returns the exit status.

Settings (`resolve`, conventions in docs/cli.md): CLI > YAML > defaults, as in `mlx_lm.lora`:
every flag is parsed starting from None (= not given), YAML values fill what the command line
left out, and the parser's declared defaults fill the rest. A YAML key is a dest or any of the
setting's long flags in snake_case (`no_plot: true`); its value is coerced with the flag's own
`type` (PyYAML reads `1e-3` as a string) and checked against its `choices`, so a bad value
fails before anything runs.

Errors (`run_verb`): bad input (`USER_ERRORS`) is one line, `mlx_qat.<verb>: error: ...`,
exit 1; any other exception is a bug in mlx_qat (`report_bug`), exit 1. `--debug` on every
verb, or `MLX_QAT_DEBUG=1`, lets every exception propagate with its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ..fileio import atomic_write_text, cache_dir

DEBUG_ENV = "MLX_QAT_DEBUG"
# Bad input, reported in one line: what our validation raises (ValueError and its subclasses:
# ConvertError, CheckpointError, ...), I/O errors, and MLX's RuntimeErrors (memory, shapes).
USER_ERRORS = (ValueError, OSError, RuntimeError, MemoryError)
# Flags that steer the command itself, not its result: never saved in the resolved settings.
NOT_SAVED = ("config", "quiet", "force", "help", "debug")
# The configs shipped with the package (package data): `--config main` is CONFIGS/main.yaml.
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class HelpFormatter(argparse.HelpFormatter):
    """`--help` with each flag's real default, once: `(default: X)` is added where the help
    text states no default of its own and X says something (not None, [], a switch's False)."""

    _STATED = re.compile(r"\(default|default:|%\(default\)")

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            self._STATED.search(text)
            or default is None
            or default is argparse.SUPPRESS
            or (isinstance(default, (list, tuple, dict)) and not default)
            or (action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction))
            or not action.option_strings
        ):
            return text
        return text + " (default: %(default)s)"


def verb_parser(verb: str, description: str) -> argparse.ArgumentParser:
    """The parser of `mlx_qat.<verb>`, with `HelpFormatter`."""
    return argparse.ArgumentParser(
        prog=f"mlx_qat.{verb}", description=description, formatter_class=HelpFormatter
    )


def add_renamed(container, old: str, action: argparse.Action) -> argparse.Action:
    """Keep `old`, the spelling `action`'s flag had before it was renamed, for one release:
    the same setting, hidden from `--help`, also as a YAML key (`q_bits`); either use warns."""
    kw: dict[str, Any] = {"dest": action.dest, "default": action.default, "help": argparse.SUPPRESS}
    if action.nargs != 0:
        kw.update(type=action.type, choices=action.choices, nargs=action.nargs)
        kw["metavar"] = action.metavar
    alias = container.add_argument(old, action=type(action), **kw)
    news = list(action.option_strings)
    if len(news) != len(alias.option_strings):  # --plots/--no-plots -> --plot/--no-plot
        news = [news[0]] * len(alias.option_strings)
    alias.renamed = dict(zip(alias.option_strings, news))
    return alias


def add_config(parser: argparse.ArgumentParser) -> None:
    names = ", ".join(shipped_configs())
    parser.add_argument(
        "--config",
        metavar="FILE.yaml|NAME",
        help=f"read settings from a YAML file, or a shipped config by name ({names}); CLI flags win",
    )


def add_common(parser: argparse.ArgumentParser) -> None:
    """`--config FILE.yaml` and `--quiet`, which every verb takes."""
    add_config(parser)
    parser.add_argument("--quiet", action="store_true", help="print only results and errors")


def shipped_configs() -> list[str]:
    """Names of the configs shipped in `mlx_qat/configs/` (`main`, `mac`, ...)."""
    return sorted(p.stem for p in CONFIGS.glob("*.yaml"))


def config_file(value: str | Path, flag: str = "--config") -> Path:
    """`value` when it exists; else the shipped config it names (`main` or `main.yaml`);
    ValueError listing the shipped names otherwise."""
    path = Path(value)
    if path.exists():
        return path
    name = path.name[: -len(".yaml")] if path.name.endswith(".yaml") else path.name
    if str(path) in (name, f"{name}.yaml") and (CONFIGS / f"{name}.yaml").is_file():
        return CONFIGS / f"{name}.yaml"
    raise ValueError(
        f"{flag} {value}: no such file, and not the name of a shipped config "
        f"({', '.join(shipped_configs())})"
    )


def _actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    # argparse has no public accessor for its actions; this is the one place that reads them.
    return [a for a in parser._actions if a.dest != "help"]  # noqa: SLF001


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    # dest -> the action of that setting (its current spelling, not a renamed one's)
    return {a.dest: a for a in _actions(parser) if not hasattr(a, "renamed")}


def _yaml_keys(parser: argparse.ArgumentParser) -> dict[str, tuple[str, bool, str | None]]:
    # YAML key -> (dest, whether the value is negated, the renamed flag it spells or None)
    keys: dict[str, tuple[str, bool, str | None]] = {d: (d, False, None) for d in _options(parser)}
    for a in _actions(parser):
        for flag in a.option_strings:
            key = flag.lstrip("-").replace("-", "_")
            if not flag.startswith("--") or key in keys:
                continue
            negated = a.nargs == 0 and (
                a.const is False
                or (isinstance(a, argparse.BooleanOptionalAction) and flag.startswith("--no-"))
            )
            keys[key] = (a.dest, negated, flag if hasattr(a, "renamed") else None)
    return keys


def _renamed(parser: argparse.ArgumentParser) -> dict[str, str]:
    return {o: n for a in _actions(parser) for o, n in getattr(a, "renamed", {}).items()}


def _warn_renamed(prog: str, old: str, new: str, where: str = "") -> None:
    print(
        f"{prog}: warning: {where}{old} is now spelt {new}; {old} goes in the next release",
        file=sys.stderr,
    )


def accept_in_yaml(parser: argparse.ArgumentParser, other: argparse.ArgumentParser) -> None:
    """Let `--config` YAML also hold `other`'s settings that `parser` has no flag for (checked
    as `other` reads them, passed on): `plan` reads a whole training config."""
    parser.yaml_also = other  # type: ignore[attr-defined]


def _coerce(action: argparse.Action, key: str, value: Any, where: str) -> Any:
    # a YAML value converted as the flag would convert its text
    flag = next((s for s in action.option_strings if s.startswith("--")), None)
    flag = flag or "--" + key.replace("_", "-")

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
        return [_coerce_one(action, v, bad) for v in items]
    if isinstance(value, (list, dict)):
        raise bad("must be a single value")
    return _coerce_one(action, value, bad)


def _coerce_one(action, value, bad):
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
    """Parse `argv` and merge: CLI > `--config` YAML > the parser's defaults; ValueError
    naming the key for an unknown key, a bad value, or a setting given twice."""
    argv = sys.argv[1:] if argv is None else list(argv)
    actions = _options(parser)
    defaults = {dest: a.default for dest, a in actions.items()}
    # Every setting starts as None (= not given): argparse fills in a default only where the
    # namespace has no value, and the declared defaults stay in place for --help.
    unset = argparse.Namespace(**{dest: None for dest in actions})
    given = {k: v for k, v in vars(parser.parse_args(argv, unset)).items() if v is not None}
    renamed = _renamed(parser)
    for flag in (a.split("=", 1)[0] for a in argv[: argv.index("--") if "--" in argv else None]):
        if flag in renamed:
            _warn_renamed(parser.prog, flag, renamed[flag])
    merged = {k: v for k, v in defaults.items() if v is not argparse.SUPPRESS}
    path = given.pop("config", None)
    if path is not None:
        path = config_file(path)
        where = f"--config {path}"
        keys = {k: v for k, v in _yaml_keys(parser).items() if v[0] != "config"}
        also = getattr(parser, "yaml_also", None)
        if also is not None:
            renamed = {**_renamed(also), **renamed}
            actions = {**_options(also), **actions}
            keys = {
                **{k: v for k, v in _yaml_keys(also).items() if v[0] not in _options(parser)},
                **keys,
            }
        loaded = load_yaml(path)
        unknown = sorted(set(loaded) - set(keys))
        if unknown:
            known = sorted({dest for dest, _, _ in keys.values()})
            raise ValueError(
                f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(known)}"
            )
        seen: dict[str, str] = {}
        for key, value in loaded.items():
            dest, negated, old = keys[key]
            if dest in seen:
                raise ValueError(
                    f"{where}: {seen[dest]} and {key} are the same setting; keep one of them"
                )
            seen[dest] = key
            if old is not None:
                new = renamed[old].lstrip("-").replace("-", "_")
                _warn_renamed(parser.prog, key, new, f"{where}: ")
            value = _coerce(actions[dest], key, value, where)
            merged[dest] = (not value) if negated and value is not None else value
        merged["config"] = str(path)
    merged.update(given)
    return merged


def save_resolved(path: str | Path, verb: str, opts: dict) -> Path:
    """Write the resolved settings as YAML at `path` (atomically); returns the path.
    `mlx_qat.<verb> --config PATH` repeats the command."""
    kept = {k: v for k, v in opts.items() if k not in NOT_SAVED}
    text = f"# mlx_qat.{verb} resolved settings (CLI > --config YAML > defaults)\n"
    atomic_write_text(Path(path), text + yaml.safe_dump(kept, sort_keys=False))
    return Path(path)


class _StderrHandler(logging.StreamHandler):
    # writes to whatever `sys.stderr` is at the time (it may be swapped, e.g. by pytest)
    stream = property(lambda _self: sys.stderr, lambda _self, _value: None)  # type: ignore


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


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def report_bug(verb: str, argv: list[str], exc: BaseException) -> None:
    """Print an unexpected exception as a bug: its message, where it was raised, and where its
    traceback was saved with the command and versions, under `<cache>/crashes` (the traceback
    itself when it cannot be saved)."""
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    lines = [
        f"mlx_qat.{verb}: internal error: {type(exc).__name__}: {exc}",
        f"  raised at {frame.filename}:{frame.lineno} in {frame.name}",
    ]
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = cache_dir() / "crashes" / f"{verb}-{stamp}-{os.getpid()}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            path,
            f"command: mlx_qat.{verb} {' '.join(argv)}\ncwd: {os.getcwd()}\n"
            f"mlx_qat {_version('mlx_qat')}, mlx {_version('mlx')}, mlx-lm {_version('mlx-lm')}, "
            f"Python {platform.python_version()}, {platform.platform()}\n\n{trace}",
        )
        lines += [
            f"This is a bug in mlx_qat, not in your input. Its full traceback is in {path}:",
            "please report it with that file. Rerun with --debug (or MLX_QAT_DEBUG=1) to see "
            "the traceback here.",
        ]
    except OSError as e:
        lines += [
            f"This is a bug in mlx_qat, not in your input (could not save its traceback: {e});",
            "please report it with this traceback:",
            trace.rstrip(),
        ]
    print("\n".join(lines), file=sys.stderr)


def verb_main(verb: str, build_parser, body) -> Callable[[list[str] | None], int]:
    """`main(argv=None) -> int` of verb `verb`: `run_verb(verb, build_parser, body, argv)`."""

    def main(argv: list[str] | None = None) -> int:
        return run_verb(verb, build_parser, body, argv)

    main.__doc__ = f"Entry point of `mlx_qat.{verb}`; returns the exit status."
    return main


def run_verb(
    verb: str,
    build_parser: Callable[[], argparse.ArgumentParser],
    body: Callable[[dict], int],
    argv: list[str] | None,
    log_format: str = "%(message)s",
) -> int:
    """Run one verb: re-exec with OpenBLAS (console script only), resolve the settings, set up
    logging once, call `body(opts)`, errors as the module header says (usage errors and bad
    `--config` settings exit 2). `--debug` is added to every verb's parser here."""
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
