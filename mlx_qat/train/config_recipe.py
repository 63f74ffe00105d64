"""The groups of `TrainConfig` that make up the training recipe — schedule (the token budget,
its FP/QAT split and the LR), optimizer, quantization, distillation, TRS — with their allowed
values; the quantization group builds the run's one `QATConfig` (`qat_config()`).

`quant_overrides` are per-path formats: `GLOB=SPEC` (`--quant-overrides`, repeatable) or
`glob: spec` (YAML), SPEC being bits (`lm_head=8`: affine at the run's group size), a mode
(`'*.mlp.*=mxfp4'`), `float` (left unquantized) or a mapping `{bits, group_size, mode}`
(mlx-lm's per-path `quantization` entry). They become `QATConfig.overrides`: an exact module
path first, then globs (`fnmatch`) in order.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import fields
from typing import Any

import yaml

from ..models.build import qat_config as build_qat_config
from ..qat_config import QATConfig
from ..quant.learned_affine import SCALE_GRADS
from ..quant.quantizers import QUANTIZERS
from ..quant.spec import MODES as Q_MODES
from .config_groups import check_choices, group, need, normalize_fraction, parse_count, setting
from .schedules import COOLDOWN_MODES, PIPELINES
from .schedules import SHAPES as COOLDOWN_SHAPES

SWITCH_STATE = ("keep", "reset")
LR_CONTROLS = ("schedule", "trs")
GRANULARITIES = ("global", "layer")
OBJECTIVES = ("ce", "kd", "mix")
TEACHER_DTYPES = ("float32", "float16", "bfloat16")
TRAINED = ("all", "grid")
# T^2 KL(p_t^T || p_s^T) -> Var(z_t - z_s) / 2 as T grows (Hinton et al. 2015, logit matching):
# at T = 100 a logit spread of +-20 nats is within 0.2 of uniform, so a larger T changes nothing
# but the float32 precision of a KL that shrinks as 1/T^2.
KD_MAX_TEMPERATURE = 100.0


class _OverrideError(argparse.ArgumentTypeError, ValueError):
    """A bad --quant-overrides item: argparse prints its message as it is."""


_OVERRIDE_HELP = (
    "write GLOB=SPEC, SPEC = bits (lm_head=8), a mode ('*.mlp.*=mxfp4'), float, or a "
    "mapping ('model.layers.0.*={bits: 4, group_size: 32}')"
)


def _override_rule(glob: str, value: Any) -> int | dict | None:
    """One override's value as QATConfig takes it: bits, a dict, or None (float)."""
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


@group("schedule", "token budget, FP/QAT split and learning-rate schedule")
class ScheduleSettings:
    tokens: int = setting(3_000_000, "total training tokens D (FP + QAT)")
    qat_fraction: str | None = setting(
        None, "QAT share f of the tokens, or 'auto' = exp(-a / ln S)"
    )
    auto_a: float = setting(6.7297, "constant a of the auto fraction")
    auto_scale: float | None = setting(
        None, "multiple k of the auto fraction: min(1, k exp(-a/ln S))"
    )
    pipeline: str = setting("fused", "LR pipeline", choices=PIPELINES)
    cooldown_shape: str = setting("1-sqrt", "LR decay shape", choices=COOLDOWN_SHAPES)
    cooldown_fraction: float = setting(
        0.2, "fused: decay over min(D_qat, c*D); classic: FP cooldown over c*D_fp"
    )
    cooldown_mode: str = setting(
        "fused",
        "fused pipeline: 'fused' ties the decay to the QAT phase (min(D_qat, c*D)); 'fixed' "
        "decays over the last c*D whatever f (the QAT fraction moves the switch, not the "
        "cooldown); the classic pipeline ignores it",
        choices=COOLDOWN_MODES,
    )
    warmup_tokens: int | None = setting(None, "LR warmup in tokens, instead of --warmup-steps")
    warmup_steps: int | None = setting(None, "LR warmup in steps (default: min(2% of steps, 500))")
    qat_warmup_fraction: float = setting(0.01, "classic: QAT re-warmup as a share of the QAT steps")
    lr: float | None = setting(None, "peak learning rate")
    min_lr: float = setting(0.0, "learning rate at the end of a decay")

    def check(self) -> None:
        self.tokens = parse_count(self.tokens, "tokens")
        if self.warmup_tokens is not None:
            self.warmup_tokens = parse_count(self.warmup_tokens, "warmup_tokens")
        if int(self.tokens) < 1:
            raise ValueError(f"tokens={self.tokens}: must be >= 1")
        self.qat_fraction = normalize_fraction(self.qat_fraction)
        check_choices(self, ScheduleSettings)
        if not 0.0 <= self.cooldown_fraction <= 1.0:
            raise ValueError(f"cooldown_fraction={self.cooldown_fraction}: must be in [0, 1]")
        if not 0.0 <= self.qat_warmup_fraction <= 1.0:
            raise ValueError(f"qat_warmup_fraction={self.qat_warmup_fraction}: must be in [0, 1]")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(f"lr={self.lr}, min_lr={self.min_lr}: need 0 <= min_lr <= lr, lr > 0")
        if self.warmup_tokens is not None and self.warmup_steps is not None:
            raise ValueError("warmup_tokens and warmup_steps: give at most one of them")
        need(self, self.auto_a > 0, "auto_a", "> 0")
        need(self, self.auto_scale > 0, "auto_scale", "> 0")
        need(self, self.warmup_tokens is None or self.warmup_tokens >= 0, "warmup_tokens", ">= 0")
        need(self, self.warmup_steps is None or self.warmup_steps >= 0, "warmup_steps", ">= 0")
        for name in ("lr", "min_lr", "auto_a", "auto_scale"):
            need(self, math.isfinite(getattr(self, name)), name, "a finite number")


@group("optimizer", "optimizer (AdamW)")
class OptimizerSettings:
    optimizer_state_at_switch: str = setting(
        "keep", "AdamW moments at the FP->QAT switch", choices=SWITCH_STATE
    )
    weight_decay: float | None = setting(None, "AdamW weight decay (matrices only)")
    beta1: float = setting(0.9, "AdamW beta1")
    beta2: float = setting(0.95, "AdamW beta2")
    eps: float = setting(1e-8, "AdamW epsilon")
    grad_clip: float = setting(1.0, "global gradient-norm clip (0: off)")
    # 0.03: learned_affine on the main job recovered 47-53% of the PTQ gap at x0.003-x0.03 and
    # 41% at x0.1 (benchmarks/results/main_job.md); LSQ at x1 diverged at a pretraining LR.
    quantizer_lr_scale: float | None = setting(
        None, "LR multiplier of learnable quantizer parameters (LSQ alpha, scales)"
    )
    weight_lr_scale: float = setting(
        1.0,
        "LR multiplier of the weight matrices (linear layers, embedding); norms and biases stay "
        "at --lr. Below 1 with --quantizer-lr-scale 1, the grid and the norms train at --lr "
        "(as DWQ's do) while the weights move slower; 0 holds them (use --train grid: the same "
        "training without their gradients and moments)",
    )

    def check(self) -> None:
        check_choices(self, OptimizerSettings)
        need(self, self.grad_clip >= 0, "grad_clip", ">= 0 (0: off)")
        need(self, self.weight_decay >= 0, "weight_decay", ">= 0")
        need(self, 0 <= self.beta1 < 1, "beta1", "in [0, 1)")
        need(self, 0 <= self.beta2 < 1, "beta2", "in [0, 1)")
        need(self, self.eps > 0, "eps", "> 0")
        need(self, self.quantizer_lr_scale >= 0, "quantizer_lr_scale", ">= 0")
        need(self, 0 <= self.weight_lr_scale < math.inf, "weight_lr_scale", ">= 0 and finite")
        for name in ("eps", "weight_decay", "grad_clip"):
            need(self, math.isfinite(getattr(self, name)), name, "a finite number")


@group("qat", "QAT (quantization format, quantizer, what the QAT phase trains)")
class QuantSettings:
    bits: int = setting(4, "weight bits")
    group_size: int = setting(64, "quantization group size")
    q_mode: str = setting("affine", "MLX quantization mode", choices=Q_MODES)
    quantizer: str = setting("minmax", "fake-quant quantizer", choices=QUANTIZERS)
    lsq_per: str = setting("row", "LSQ step granularity", choices=("row", "group"))
    scale_grad: str | None = setting(
        None,
        "learned_affine's grid gradient: ste (straight-through) or fixed_codes (DWQ's, codes "
        "held fixed; trains the grid even when the weights hardly move)",
        choices=SCALE_GRADS,
    )
    train: str = setting(
        "all",
        "what the QAT phase trains: all (weights, grid, norms) or grid (the quantization grid "
        "and the norms, every weight frozen; with --scale-grad fixed_codes and --objective kd "
        "this is mlx-lm's DWQ). grid needs QAT from the first step (--qat-fraction 1)",
        choices=TRAINED,
    )
    grid_first_fraction: float = setting(
        0.0,
        "train the grid first: the first round(F x QAT steps) steps train what --train grid "
        "trains (the grid and the norms, the weights frozen), then the weights join at "
        "--weight-lr-scale x LR for the rest (the grid's optimizer state carries over; "
        "metrics.jsonl records the step as kind weights_join). 0: the weights train from the "
        "first step; 1: --train grid. Needs --train all and QAT from the first step",
    )
    embed_bits: int | None = setting(None, "embedding/head bits (default: max(bits, 4))")
    scale_dtype: str | None = setting(None, "scale/bias storage dtype (default: weight dtype)")
    quant_overrides: dict[str, Any] = setting(
        {},
        "per-path formats, GLOB=SPEC (repeatable): SPEC is bits (lm_head=8), a mode "
        "('*.mlp.*=mxfp4'), float (left unquantized) or {bits: 3, group_size: 32}; module "
        "paths or fnmatch globs, an exact path first, then globs in order; beats --bits and "
        "--embed-bits. YAML: a mapping glob: spec",
        nargs="+",
        action="extend",
        type=parse_quant_override,
        metavar="GLOB=SPEC",
    )
    fp_twin: bool = setting(
        False,
        "after training, rerun the QAT phase from the switch checkpoint with fake quant off "
        "(<out>/fp_twin): the FP model and its PTQ that QAT is compared with",
    )
    ablate_qat: bool = setting(
        False, "run the QAT phase with fake quant off (what --fp-twin trains)"
    )

    def check(self) -> None:
        check_choices(self, QuantSettings)
        self.quant_overrides = normalize_overrides(self.quant_overrides)
        need(
            self,
            self.scale_grad == "ste" or self.quantizer == "learned_affine",
            "scale_grad",
            "'ste' unless --quantizer learned_affine (the option is that quantizer's)",
        )
        need(
            self,
            self.train == "all" or self.quantizer != "minmax",
            "train",
            "'all' with --quantizer minmax (its grid has nothing to learn): use --quantizer "
            "learned_affine (or lsq) with --train grid",
        )
        need(self, 0 <= self.grid_first_fraction <= 1, "grid_first_fraction", "in [0, 1]")
        need(
            self,
            not self.grid_first_fraction or (self.train == "all" and self.quantizer != "minmax"),
            "grid_first_fraction",
            "0 with --train grid (the weights never join: that is grid_first_fraction 1) or "
            "with --quantizer minmax (its grid has nothing to learn): use --train all and "
            "--quantizer learned_affine (or lsq)",
        )
        self.qat_config()  # a format MLX cannot quantize to fails here, not after the data

    def qat_config(self) -> QATConfig:
        """The run's `QATConfig` (`models.build.qat_config`), built once and again only when
        a field of this group changed since."""
        key = repr([getattr(self, f.name) for f in fields(QuantSettings)])
        if self.__dict__.get("_qat_key") != key:
            self.__dict__["_qat"], self.__dict__["_qat_key"] = build_qat_config(self), key
        return self.__dict__["_qat"]


@group("distill", "distillation (the QAT phase's loss)")
class DistillSettings:
    # the FP phase always trains on cross-entropy
    objective: str = setting(
        "ce",
        "QAT-phase loss: ce (next-token cross-entropy), kd (T^2 KL to the frozen float "
        "teacher: the --model weights, else the run's weights at the switch) or mix "
        "((1-w) ce + w kd)",
        choices=OBJECTIVES,
    )
    kd_temperature: float | None = setting(None, "softmax temperature T of kd and mix, in (0, 100]")
    kd_weight: float = setting(0.5, "mix: weight w of the kd term")
    teacher_dtype: str | None = setting(
        None,
        "the teacher's weights in this dtype (default: the model's; float16/bfloat16 halve "
        "a float32 teacher's memory)",
        choices=TEACHER_DTYPES,
        unset="the model's dtype",
    )

    def check(self) -> None:
        check_choices(self, DistillSettings)
        need(
            self,
            0 < self.kd_temperature <= KD_MAX_TEMPERATURE,
            "kd_temperature",
            f"in (0, {KD_MAX_TEMPERATURE:g}] (--kd-temperature; 1-4 is usual): past that T^2 KL "
            "is the logit-matching limit and only loses float32 precision",
        )
        need(self, 0 <= self.kd_weight <= 1, "kd_weight", "in [0, 1]")


@group("trs", "transition-rate scheduling (TRS, the QAT phase's LR control)")
class TRSSettings:
    # train/trs.py; paper 001
    lr_control: str = setting(
        "schedule",
        "QAT phase: quantized weights at the scheduled LR, or at TRS's transition-adaptive LR "
        "U <- max(0, U + eta (R - K)) steering the EMA K of the code-change rate to a cosine "
        "target R (their quantizer scales frozen)",
        choices=LR_CONTROLS,
    )
    trs_lambda: float = setting(5e-3, "TRS: initial target rate R0 = lambda * sqrt(bits)")
    trs_momentum: float = setting(
        0.99, "EMA momentum m of the transition rate (the statistics and TRS's K)"
    )
    trs_granularity: str = setting(
        "global", "TRS: one U for all QAT layers, or one U per layer", choices=GRANULARITIES
    )
    trs_u0: float | None = setting(
        None, "TRS: U at the switch (default: the scheduled LR at the QAT phase's start)"
    )
    trs_eta: float | None = setting(None, "TRS: controller gain eta (default: U0)")

    def check(self) -> None:
        check_choices(self, TRSSettings)
        need(self, 0 < self.trs_lambda < math.inf, "trs_lambda", "> 0 and finite")
        need(self, 0 <= self.trs_momentum < 1, "trs_momentum", "in [0, 1)")
        need(self, self.trs_u0 is None or 0 <= self.trs_u0 < math.inf, "trs_u0", ">= 0 (or unset)")
        need(
            self, self.trs_eta is None or 0 <= self.trs_eta < math.inf, "trs_eta", ">= 0 (or unset)"
        )
