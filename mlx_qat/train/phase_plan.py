"""The phase plan: how many steps of FP training, then of QAT, and the LR at every step.

A budget of `D` tokens is split into an FP phase of `(1 − f)·D` tokens (fake quant off) and a
QAT phase of `f·D` tokens (fake quant on). `f = "auto"` uses paper 000's predictor

    f̂ = exp(−a / ln S),   S = D / bytes,   a = 6.7297

where `bytes` is the model's parameter bytes with every quantized tensor at its own nominal
bits (embeddings at theirs) and float tensors at their dtype (`models.sizing.parameter_bytes`).
S is tokens per parameter-byte; f̂ is defined for S > 1 only: for S ≤ 1 (fewer tokens than
bytes) the predictor says no QAT at all, and the plan returns f̂ = 0 with a `warning`.
`auto_scale` k takes `f = min(1, k·f̂)` instead (from scratch: k = 2 at 2 bits, `defaults.py`).

Steps are optimizer steps of `tokens_per_step = batch_size · seq_len · grad_accum` tokens;
`total_steps = ceil(D / tokens_per_step)` and `qat_steps = round(f · total_steps)`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..model_source import resolve_model
from .schedules import lr_at

AUTO_A = 6.7297


def auto_fraction(tokens_per_byte: float, a: float = AUTO_A) -> float:
    """f̂ = exp(−a / ln S); 0 for S ≤ 1 (the predictor is only defined above 1).

    Example:
        >>> round(auto_fraction(100), 3), round(auto_fraction(1000), 3)
        (0.232, 0.377)
    """
    if tokens_per_byte <= 1.0:
        return 0.0
    return math.exp(-a / math.log(tokens_per_byte))


@dataclass(frozen=True)
class PhasePlan:
    """Step counts and LR schedule of one run (`schedules`). `lr_at(step)` gives the LR of any
    step. `fraction` is the realised QAT share, `requested` the asked one ("auto" or a number),
    `f_hat` the predictor's value; `cooldown_steps` is the fused decay at the end of the run,
    or the classic FP cooldown (`qat_warmup_steps`: its QAT re-warmup, 0 for fused)."""

    total_tokens: int
    tokens_per_step: int
    total_steps: int
    fp_steps: int
    qat_steps: int
    fraction: float
    requested: str | float
    f_hat: float
    n_params: int
    n_params_no_embed: int
    param_bytes: float
    tokens_per_byte: float
    pipeline: str
    shape: str
    lr: float
    min_lr: float
    warmup_steps: int
    cooldown_steps: int
    qat_warmup_steps: int
    warning: str = field(default="")
    cooldown_mode: str = field(default="fused")
    auto_scale: float = field(default=1.0)

    @property
    def switch_step(self) -> int:
        """The first QAT step (== fp_steps); equals total_steps when there is no QAT."""
        return self.fp_steps

    @property
    def fp_tokens(self) -> int:
        return self.fp_steps * self.tokens_per_step

    @property
    def qat_tokens(self) -> int:
        return self.qat_steps * self.tokens_per_step

    def phase(self, step: int) -> str:
        return "qat" if step >= self.fp_steps else "fp"

    def lr_at(self, step: int) -> float:
        return lr_at(self, step)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(switch_step=self.switch_step, fp_tokens=self.fp_tokens, qat_tokens=self.qat_tokens)
        return d

    def table(self) -> str:
        """Human-readable summary (what `mlx_qat.plan` prints)."""
        s = self.tokens_per_byte
        req = self.requested if self.requested == "auto" else f"{float(self.requested):g}"
        if self.requested == "auto" and self.auto_scale != 1.0:
            req = f"auto x {self.auto_scale:g}"
        tps = self.tokens_per_step
        bits = 8 * self.param_bytes / max(self.n_params, 1)
        fp = f"{self.fp_tokens:,} tokens, steps 0..{self.fp_steps - 1}" if self.fp_steps else "none"
        qat = f"{self.qat_tokens:,} tokens, steps {self.fp_steps}..{self.total_steps - 1}"
        rows = [
            ("parameters N", f"{self.n_params:,} ({self.n_params_no_embed:,} without embeddings)"),
            ("parameter bytes", f"{self.param_bytes:,.0f} ({bits:.2f} bits/param)"),
            ("tokens D", f"{self.total_tokens:,} ({self.total_steps:,} steps x {tps:,} tokens)"),
            ("tokens/byte S", f"{s:,.2f}"),
            ("auto fraction", f"{self.f_hat:.4f}  (exp(-a/ln S))"),
            ("QAT fraction f", f"{self.fraction:.4f}  (requested: {req})"),
            ("FP phase", fp),
            ("QAT phase", qat if self.qat_steps else "none (PTQ only)"),
            ("pipeline", f"{self.pipeline}, {self.shape} decay"),
            ("LR", self._lr_summary()),
        ]
        if self.warning:
            rows.append(("warning", self.warning))
        w = max(len(k) for k, _ in rows)
        return "\n".join(f"  {k:<{w}}  {v}" for k, v in rows)

    def _lr_summary(self) -> str:
        parts = [f"peak {self.lr:g}, floor {self.min_lr:g}", f"warmup {self.warmup_steps} steps"]
        if self.pipeline == "fused" or not self.qat_steps:
            fixed = " (fixed: the same for every f)" if self.cooldown_mode == "fixed" else ""
            parts.append(f"decay over the last {self.cooldown_steps} steps{fixed}")
        else:
            parts.append(f"FP cooldown {self.cooldown_steps} steps")
            parts.append(f"QAT re-warmup {self.qat_warmup_steps} steps then decay")
        return "; ".join(parts)


def make_plan(config, n_params: int, n_params_no_embed: int, param_bytes: float) -> PhasePlan:
    """The plan for a `TrainConfig` and a model size (from `parameter_bytes`)."""
    tps = config.tokens_per_step
    total = max(1, math.ceil(config.tokens / tps))
    s = config.tokens / param_bytes if param_bytes > 0 else math.inf
    f_hat = auto_fraction(s, config.auto_a)
    warning = ""
    if config.qat_fraction == "auto":
        f = min(1.0, config.auto_scale * f_hat)
        if s <= 1:
            warning = (
                f"S = D / bytes = {s:.3g} <= 1: the auto QAT fraction exp(-a/ln S) is only "
                "defined for S > 1 and is taken as 0 (PTQ only); train on more tokens, use a "
                "smaller model, or set --qat-fraction"
            )
    else:
        f = float(config.qat_fraction)
    qat = min(total, max(0, round(f * total)))
    if 0 < f < 1 and qat in (0, total):
        warning = warning or (
            f"QAT fraction {f:.4f} of {total} steps rounds to {qat} QAT steps; "
            "train on more tokens or change --qat-fraction"
        )
    fp = total - qat
    if config.warmup_steps is not None:
        warm = int(config.warmup_steps)
    elif config.warmup_tokens is not None:
        warm = math.ceil(config.warmup_tokens / tps)
    else:
        warm = min(round(0.02 * total), 500)
    warm = max(0, min(warm, total))
    c = config.cooldown_fraction
    qw = 0
    if config.pipeline == "fused" or qat == 0:
        # fixed: the f = 0 run's decay whatever f (the schedule does not move with f)
        fixed = config.cooldown_mode == "fixed"
        cooldown = min(qat, round(c * total)) if qat and not fixed else round(c * total)
    else:
        cooldown = round(c * fp)
        qw = max(1, round(config.qat_warmup_fraction * qat))
        if fp == 0:
            qw = max(qw, warm)
        qw = min(qw, qat)
    return PhasePlan(
        total_tokens=int(config.tokens), tokens_per_step=tps, total_steps=total, fp_steps=fp,
        qat_steps=qat, fraction=qat / total, requested=config.qat_fraction, f_hat=f_hat,
        n_params=int(n_params), n_params_no_embed=int(n_params_no_embed),
        param_bytes=float(param_bytes), tokens_per_byte=s, pipeline=config.pipeline,
        shape=config.cooldown_shape, lr=float(config.lr), min_lr=float(config.min_lr),
        warmup_steps=warm, cooldown_steps=int(cooldown), qat_warmup_steps=int(qw),
        warning=warning, cooldown_mode=config.cooldown_mode, auto_scale=float(config.auto_scale),
    )  # fmt: skip


def plan_for_model(config, model) -> PhasePlan:
    """`make_plan` for `config` and a model already `prepare`d with the run's QATConfig."""
    from ..models.sizing import parameter_bytes

    pb = parameter_bytes(model)
    return make_plan(config, pb.n_params, pb.n_params_no_embed, pb.bytes)


def _vocab_size(config) -> int:
    # Prepared data knows its vocabulary; raw inputs will get a tokenizer of config.vocab_size.
    if config.data and len(config.data) == 1:
        p = Path(config.data[0])
        if (p / "manifest.json").is_file():
            return int(json.loads((p / "manifest.json").read_text())["vocab_size"])
        if (p / "latest.json").is_file():
            from ..data import load_bundle

            return load_bundle(p).vocab_size
    return config.vocab_size


def plan_for_config(config) -> PhasePlan:
    """The plan a `TrainConfig` would train with (`mlx_qat.plan`), from a lazily built model
    (nothing allocated) sized exactly as the trainer sizes it."""
    from ..models.build import scratch_model_config
    from ..models.presets import model_from_config
    from ..prepare import prepare

    vocab = _vocab_size(config)
    if config.model:
        mcfg = dict(resolve_model(config.model, config.revision, "--model").config)
        mcfg.setdefault("vocab_size", vocab)
    else:
        mcfg = scratch_model_config(config, vocab)
    model = model_from_config(mcfg)
    prepare(model, config.qat_config(), enabled=False)
    return plan_for_model(config, model)
