"""Distillation from the float model: the QAT phase's training objective and its teacher.

Objectives (`TrainConfig.objective`), per target token, averaged over the batch's tokens:

    ce:   CE  = −log p_s(y)                                   next-token cross-entropy
    kd:   KD  = T² · KL(p_t^T ‖ p_s^T),  p^T = softmax(z / T)  (`kd.kd_per_token`)
    mix:  (1 − w) · CE + w · KD

with T = `kd_temperature`, w = `kd_weight`, z the logits, s the student (the model being
trained, fake quant on) and t the teacher; every log-softmax is float32. The T² keeps the
gradient's scale independent of T: ∂KL^T/∂z_s = (p_s^T − p_t^T) / T (Hinton et al., 2015).
KD is exactly 0 for a student equal to its teacher.

The teacher is a frozen float copy of the model (a plain mlx-lm model, no QAT layers): a
fine-tune's `--model` weights, else the run's own weights at the FP→QAT switch (on resume, read
from the switch checkpoint, which the trainer always keeps). The objective applies in the QAT
phase only. The teacher's logits are computed inside the compiled step under
`mx.stop_gradient`; its weights are captured as constants, neither traced again nor copied per
step. Evaluations report each mode's mean KL to the teacher at T = 1 (`kl`). Memory: its
weights in `teacher_dtype` (default the model's) plus one (B, T, V) logits buffer per
micro-batch (`memory.step_bytes`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..model_source import build_float, freeze
from ..prepare import is_quantizer_param
from .config import OBJECTIVES
from .kd import hidden_and_head, kd_head_per_token, kd_per_token, split_head
from .resume import switch_checkpoint, switch_weights
from .step import masked_mean

logger = logging.getLogger(__name__)


def objective_loss(
    logits: mx.array,
    teacher_logits: mx.array | None,
    targets: mx.array,
    objective: str = "kd",
    temperature: float = 1.0,
    weight: float = 0.5,
    weights: mx.array | None = None,
) -> mx.array:
    """The mean loss of `objective` ("ce", "kd" or "mix") over the target tokens (float32;
    with `weights`, 0 on prompt tokens, over those of weight 1: `step.masked_mean`)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective={objective!r}: choose one of {', '.join(OBJECTIVES)}")
    ce = kd = None
    if objective != "kd":
        ce = nn.losses.cross_entropy(logits.astype(mx.float32), targets, reduction="none")
        ce = masked_mean(ce, weights)
    if objective != "ce":
        if teacher_logits is None:
            raise ValueError(f"objective={objective!r}: needs the teacher's logits")
        kd = masked_mean(kd_per_token(logits, teacher_logits, temperature), weights)
    if objective == "mix":
        return (1.0 - weight) * ce + weight * kd
    return ce if objective == "ce" else kd


def make_loss(teacher: nn.Module | None, cfg, student: nn.Module | None = None) -> Callable | None:
    """`loss(model, inputs, targets, weights=None)` of `cfg.objective` against `teacher` for
    `step.make_step`; None (the step's cross-entropy) for "ce" or without a teacher. With
    `student` and "kd", when both models pass `kd.split_head`, the loss never forms either
    model's full logits (`kd.kd_head_per_token`)."""
    if teacher is None or cfg.objective == "ce":
        return None
    objective, temperature, weight = cfg.objective, cfg.kd_temperature, cfg.kd_weight
    if objective == "kd" and student is not None and split_head(student) and split_head(teacher):

        def chunked(model: nn.Module, inputs: mx.array, targets: mx.array, weights=None):
            ht, wt = (mx.stop_gradient(a) for a in hidden_and_head(teacher, inputs))
            h, w = hidden_and_head(model, inputs)
            return masked_mean(kd_head_per_token(h, w, ht, wt, temperature), weights)

        logger.info("kd: logits formed a chunk of tokens at a time (kd.kd_head_per_token)")
        return chunked

    def loss(model: nn.Module, inputs: mx.array, targets: mx.array, weights=None) -> mx.array:
        teacher_logits = mx.stop_gradient(teacher(inputs))
        return objective_loss(
            model(inputs), teacher_logits, targets, objective, temperature, weight, weights
        )

    return loss


def _float_only(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    return {k: v for k, v in weights.items() if not is_quantizer_param(k)}


def float_weights(model: nn.Module) -> dict[str, mx.array]:
    """The model's weights without the quantizers' parameters (an mlx-lm model's)."""
    return _float_only(dict(tree_flatten(model.parameters())))


def teacher_bytes(cfg, model: nn.Module, plan) -> int:
    """Bytes of the teacher's weights for this run (0 when it has none); ValueError for a
    from-scratch run without an FP phase (no float model to learn from)."""
    if cfg.objective == "ce" or plan.qat_steps == 0:
        return 0
    if not cfg.model and plan.fp_steps == 0:
        raise ValueError(
            f"objective={cfg.objective}: the teacher is the float model at the FP->QAT switch, "
            "and this run has no FP phase; give --model DIR (fine-tuning), a --qat-fraction "
            "below 1, or --objective ce"
        )
    size = getattr(mx, cfg.teacher_dtype).size if cfg.teacher_dtype else None
    return sum(v.size * (size or v.dtype.size) for v in float_weights(model).values())


def run_teacher(t, at_switch: bool) -> nn.Module | None:
    """The teacher of trainer `t`'s QAT phase (None for "ce"); `at_switch`: `t.model` holds
    the switch weights, else (a QAT-phase resume) they are read from the switch checkpoint."""
    cfg = t.cfg
    if cfg.objective == "ce":
        return None
    if cfg.model:
        teacher = freeze(t.float_model(), cfg.teacher_dtype)
        source = cfg.model
    else:
        weights = float_weights(t.model)  # at the switch; else the layout to receive
        source = f"the weights at the switch (step {t.step})"
        if not at_switch:
            source = switch_checkpoint(t)
            weights = switch_weights(t, weights, _float_only, "teacher weights")
        teacher = build_float(t.model_config, weights, cfg.teacher_dtype)
    n = sum(v.size for _, v in tree_flatten(teacher.parameters()))
    mb = sum(v.nbytes for _, v in tree_flatten(teacher.parameters())) / 2**20
    logger.info("teacher (%s, T=%g): %s, %d parameters, %.1f MiB", cfg.objective,
                cfg.kd_temperature, source, n, mb)  # fmt: skip
    return teacher
