"""Validation of a `TrainConfig` (called by its `__post_init__`), the allowed values of its
choice fields, and the parsers of counts ("3M") and the QAT fraction ("auto" or [0, 1]).

Everything is checked at the boundary — before data is prepared or anything is written — and
every error names the field, the problem and the fix.
"""

from __future__ import annotations

import math
import os
from typing import Any

from ..quant.learned_affine import SCALE_GRADS
from ..quant.quantizers import QUANTIZERS
from ..quant.spec import MODES as Q_MODES
from .defaults import fill_defaults
from .overrides import normalize_overrides
from .schedules import COOLDOWN_MODES, PIPELINES
from .schedules import SHAPES as COOLDOWN_SHAPES

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
# Path fields: one spelling per path (`runs/a/` and `runs/a` are the same run).
PATHS = ("out", "branch_from", "data_out", "model_config", "model")


def validate_config(self) -> None:
    """Check and normalize a `TrainConfig` in place; raise ValueError naming the field, the
    problem and the fix."""
    fill_defaults(self)  # from scratch or fine-tune (--model): what the user left out
    self.tokens = parse_count(self.tokens, "tokens")
    if self.warmup_tokens is not None:
        self.warmup_tokens = parse_count(self.warmup_tokens, "warmup_tokens")
    for name in ("tokens", "batch_size", "seq_len", "grad_accum"):
        if int(getattr(self, name)) < 1:
            raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
    self.qat_fraction = normalize_fraction(self.qat_fraction)
    for name, allowed in (
        ("pipeline", PIPELINES),
        ("cooldown_shape", COOLDOWN_SHAPES),
        ("cooldown_mode", COOLDOWN_MODES),
        ("optimizer_state_at_switch", SWITCH_STATE),
        ("quantizer", QUANTIZERS),
        ("scale_grad", SCALE_GRADS),
        ("q_mode", Q_MODES),
        ("objective", OBJECTIVES),
        ("lr_control", LR_CONTROLS),
        ("trs_granularity", GRANULARITIES),
        ("train", TRAINED),
        ("master_dtype", MASTER_DTYPES),
    ):
        if getattr(self, name) not in allowed:
            raise ValueError(f"{name}={getattr(self, name)!r}: choose one of {', '.join(allowed)}")
    if not 0.0 <= self.cooldown_fraction <= 1.0:
        raise ValueError(f"cooldown_fraction={self.cooldown_fraction}: must be in [0, 1]")
    if not 0.0 <= self.qat_warmup_fraction <= 1.0:
        raise ValueError(f"qat_warmup_fraction={self.qat_warmup_fraction}: must be in [0, 1]")
    if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
        raise ValueError(f"lr={self.lr}, min_lr={self.min_lr}: need 0 <= min_lr <= lr, lr > 0")
    if self.warmup_tokens is not None and self.warmup_steps is not None:
        raise ValueError("warmup_tokens and warmup_steps: give at most one of them")
    if self.teacher_dtype is not None and self.teacher_dtype not in TEACHER_DTYPES:
        raise ValueError(
            f"teacher_dtype={self.teacher_dtype!r}: choose one of {', '.join(TEACHER_DTYPES)}"
            " (or leave it out: the model's dtype)"
        )
    self.quant_overrides = normalize_overrides(self.quant_overrides)
    if self.keep_checkpoints < 1:
        raise ValueError(f"keep_checkpoints={self.keep_checkpoints}: must be >= 1")
    if self.eval_batches < 1 or self.final_eval_batches < 0:
        raise ValueError(
            f"eval_batches={self.eval_batches}, final_eval_batches="
            f"{self.final_eval_batches}: need eval_batches >= 1 and final_eval_batches >= 0 "
            "(0 = the whole validation split)"
        )
    if self.resume and self.branch_from:
        raise ValueError("resume and branch_from: give one (resume continues this run)")
    if self.overwrite and self.resume:
        raise ValueError("overwrite and resume: give one (overwrite deletes the run)")
    if self.reschedule and not self.resume:
        raise ValueError("reschedule: only with resume (it accepts a changed schedule)")
    _check_ranges(self)
    _check_model(self)
    if isinstance(self.data, str):
        self.data = [self.data]
    # One spelling per path: `runs/a/` and `runs/a` are the same run.
    self.data = [os.path.normpath(d) for d in self.data] if self.data else self.data
    for name in PATHS:
        if getattr(self, name):
            setattr(self, name, os.path.normpath(getattr(self, name)))


def _check_model(self) -> None:
    """The quantization formats and the preset name, so that a bad one fails here and
    not after the data was prepared."""
    from ..models.build import qat_config
    from ..models.presets import preset_config

    qat_config(self)
    if not (self.model or self.model_config):
        preset_config(self.preset, 1)


def _check_ranges(self) -> None:
    def need(ok: bool, name: str, rule: str) -> None:
        if not ok:
            raise ValueError(f"{name}={getattr(self, name)!r}: must be {rule}")

    need(0 <= self.seed < 2**63, "seed", "in [0, 2**63)")
    need(self.log_every >= 1, "log_every", ">= 1 (1: a metrics line every step)")
    need(self.save_every >= 0, "save_every", ">= 0 (0: only at the switch and the end)")
    self.save_steps = sorted({int(s) for s in self.save_steps or ()})
    need(all(s >= 1 for s in self.save_steps), "save_steps", "steps >= 1")
    need(self.eval_every >= 0, "eval_every", ">= 0 (0: only at the end)")
    need(self.cache_limit_mb >= 0, "cache_limit_mb", ">= 0")
    need(self.dist_timeout > 0, "dist_timeout", "> 0 seconds")
    need(self.grad_clip >= 0, "grad_clip", ">= 0 (0: off)")
    need(self.weight_decay >= 0, "weight_decay", ">= 0")
    need(
        self.scale_grad == "ste" or self.quantizer == "learned_affine",
        "scale_grad",
        "'ste' unless --quantizer learned_affine (the option is that quantizer's)",
    )
    need(
        self.train == "all" or self.quantizer != "minmax",
        "train",
        "'all' with --quantizer minmax (its grid has nothing to learn): use --quantizer "
        "learned_affine (or lsq) with --train grid",
    )
    need(
        self.train == "all" or self.lr_control == "schedule",
        "train",
        "'all' with --lr-control trs (TRS steers the weights, which --train grid freezes)",
    )
    need(0 <= self.beta1 < 1, "beta1", "in [0, 1)")
    need(0 <= self.beta2 < 1, "beta2", "in [0, 1)")
    need(self.eps > 0, "eps", "> 0")
    need(self.quantizer_lr_scale >= 0, "quantizer_lr_scale", ">= 0")
    need(0 <= self.weight_lr_scale < math.inf, "weight_lr_scale", ">= 0 and finite")
    need(self.auto_a > 0, "auto_a", "> 0")
    need(0 < self.trs_lambda < math.inf, "trs_lambda", "> 0 and finite")
    need(0 <= self.trs_momentum < 1, "trs_momentum", "in [0, 1)")
    need(self.trs_u0 is None or 0 <= self.trs_u0 < math.inf, "trs_u0", ">= 0 (or unset)")
    need(self.trs_eta is None or 0 <= self.trs_eta < math.inf, "trs_eta", ">= 0 (or unset)")
    need(
        0 < self.kd_temperature <= KD_MAX_TEMPERATURE,
        "kd_temperature",
        f"in (0, {KD_MAX_TEMPERATURE:g}] (--kd-temperature; 1-4 is usual): past that T^2 KL is "
        "the logit-matching limit and only loses float32 precision",
    )
    need(0 <= self.kd_weight <= 1, "kd_weight", "in [0, 1]")
    need(self.vocab_size >= 1, "vocab_size", ">= 1")
    need(self.warmup_tokens is None or self.warmup_tokens >= 0, "warmup_tokens", ">= 0")
    need(self.warmup_steps is None or self.warmup_steps >= 0, "warmup_steps", ">= 0")
    for name in ("lr", "min_lr", "eps", "weight_decay", "grad_clip", "auto_a"):
        need(math.isfinite(getattr(self, name)), name, "a finite number")


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
