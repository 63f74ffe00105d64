"""The allowed values of `TrainConfig`'s choice fields, and the parsers of counts ("3M") and
the QAT fraction ("auto" or [0, 1]) that its groups' checks use (`config_groups.py`,
`config_recipe.py`).

Everything is checked at the boundary — before data is prepared or anything is written — and
every error names the field, the problem and the fix.
"""

from __future__ import annotations

import math
from typing import Any

SWITCH_STATE = ("keep", "reset")
LR_CONTROLS = ("schedule", "trs")
GRANULARITIES = ("global", "layer")
OBJECTIVES = ("ce", "kd", "mix")
TEACHER_DTYPES = ("float32", "float16", "bfloat16")
# T^2 KL(p_t^T || p_s^T) -> Var(z_t - z_s) / 2 as T grows (Hinton et al. 2015, logit matching):
# at T = 100 a logit spread of +-20 nats is within 0.2 of uniform, so a larger T changes nothing
# but the float32 precision of a KL that shrinks as 1/T^2.
KD_MAX_TEMPERATURE = 100.0
TRAINED = ("all", "grid")
MASTER_DTYPES = ("float32", "model")


_SUFFIX = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}


def parse_count(value: Any, name: str = "value") -> int:
    """A whole count written as 3000000, "3_000_000", "3e6" or "3M" (k, M, B suffixes)."""
    if isinstance(value, bool):
        raise ValueError(f"{name}={value!r}: give a whole number such as 3000000, 3e6 or 3M")
    if isinstance(value, int):
        return value
    text = str(value).strip().replace("_", "")
    scale = _SUFFIX.get(text[-1:].lower(), 1.0)
    try:
        x = float(text[:-1] if scale != 1.0 else text) * scale
    except ValueError:
        raise ValueError(
            f"{name}={value!r}: give a whole number such as 3000000, 3e6 or 3M"
        ) from None
    if not math.isfinite(x) or x != round(x):
        raise ValueError(f"{name}={value!r}: must be a whole number of tokens")
    return int(round(x))


def normalize_fraction(value: Any) -> str | float:
    """'auto' or a float in [0, 1]; raise ValueError otherwise."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"qat_fraction={value!r}: give a number in [0, 1] or 'auto'") from None
    if not (0.0 <= f <= 1.0) or math.isnan(f):
        raise ValueError(f"qat_fraction={value!r}: must be in [0, 1] (or 'auto')")
    return f
