"""`quant_overrides`: per-path quantization formats of a run, as the command line and YAML
write them.

A rule is `GLOB=SPEC` (`--quant-overrides`, repeatable) or `glob: spec` (YAML), where SPEC is
bits (`lm_head=8`: affine at the run's group size), a mode (`'*.mlp.*=mxfp4'`), `float` (the
layer stays unquantized) or a mapping `{bits, group_size, mode}` (mlx-lm's per-path
`quantization` entry; missing fields take the mode's defaults). They become
`QATConfig.overrides` (`models.build.qat_config`): an exact module path first, then globs
(`fnmatch`) in order; and `mlx_qat.convert` exports one `quantization` entry per path whose
format differs from the global one.
"""

from __future__ import annotations

import argparse
from typing import Any

import yaml


class _OverrideError(argparse.ArgumentTypeError, ValueError):
    """A bad --quant-overrides item: argparse prints its message as it is."""


_OVERRIDE_HELP = (
    "write GLOB=SPEC, SPEC = bits (lm_head=8), a mode ('*.mlp.*=mxfp4'), float, or a "
    "mapping ('model.layers.0.*={bits: 4, group_size: 32}')"
)


def _override_rule(glob: str, value: Any) -> int | dict | None:
    """One override's value as QATConfig takes it: bits, a {bits, group_size, mode} dict, or
    None (float)."""
    where = f"quant_overrides[{glob!r}]={value!r}"
    if value is None or value == "float":
        return None
    if isinstance(value, bool):
        raise _OverrideError(f"{where}: {_OVERRIDE_HELP}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return {"mode": value}
    if isinstance(value, dict):
        extra = sorted(set(value) - {"bits", "group_size", "mode"})
        if extra:
            raise _OverrideError(f"{where}: unknown keys {extra}; use bits, group_size, mode")
        return {str(k): v for k, v in value.items()}
    raise _OverrideError(f"{where}: {_OVERRIDE_HELP}")


def parse_quant_override(text: Any) -> tuple[str, Any]:
    """One `GLOB=SPEC` item of `--quant-overrides` as (glob, rule); SPEC is read as YAML."""
    if isinstance(text, tuple) and len(text) == 2:
        return str(text[0]), _override_rule(str(text[0]), text[1])
    glob, sep, spec = str(text).partition("=")
    glob, spec = glob.strip(), spec.strip()
    if not (sep and glob and spec):
        raise _OverrideError(f"--quant-overrides {text!r}: {_OVERRIDE_HELP}")
    try:
        value = yaml.safe_load(spec)
    except yaml.YAMLError:
        raise _OverrideError(f"--quant-overrides {text!r}: {_OVERRIDE_HELP}") from None
    return glob, _override_rule(glob, value)


# A YAML mapping given for the flag becomes one GLOB=SPEC item per entry (cli.common).
parse_quant_override.accepts_mapping = True  # type: ignore[attr-defined]


def normalize_overrides(value: Any) -> dict[str, Any]:
    """`quant_overrides` as {glob: bits | {bits, group_size, mode} | None}, from a mapping or
    a list of `GLOB=SPEC` strings / (glob, spec) pairs (the flag's values)."""
    if not value:
        return {}
    if isinstance(value, dict):
        return {str(k): _override_rule(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return dict(parse_quant_override(item) for item in value)
    raise ValueError(f"quant_overrides={value!r}: give a mapping of glob: spec ({_OVERRIDE_HELP})")
