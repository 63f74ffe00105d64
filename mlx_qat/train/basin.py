"""The QAT phase's basin monitor (`--basin-monitor`): does the STE gradient point back into the
float model's basin, and when does the QAT loss re-enter it?

Paper B (Li, Ma, Cui, arXiv 2606.09012) explains QAT's recovery by an "inward component" of the
gradient taken at the quantized weights. Its full text was not available: the quantities below
are **reconstructions** from its abstract and secondary notes (docs/research/
papers001_002_trs_geometry.md §2.4–§2.7, D4 and D5), with the float weights at the switch
standing in for the paper's river point. Reference point w_fp: every QAT layer's float weight at
the FP→QAT switch (a fine-tune with no FP phase: the `--model` weights).

**Inward cosine**, at the switch and at each periodic evaluation of the QAT phase, on the
first validation batch, for each QAT layer ℓ (all arithmetic float32):

    g_ℓ   = ∂L/∂w_ℓ            the STE gradient of the training objective w.r.t. the latent
                               weight, fake quant on (uncompiled, outside the step)
    d_ℓ   = w_fp,ℓ − Q(w_ℓ)    from the quantized (effective) weight back to the float weights
    inward_cos           = ⟨−g, d⟩ / (‖g‖·‖d‖)  over all QAT layers' weights flattened together
    inward_cos_layers[ℓ] = ⟨−g_ℓ, d_ℓ⟩ / (‖g_ℓ‖·‖d_ℓ‖)   (None where a norm is 0)
    inward_cos_fp        = inward_cos with g = ∂L/∂w at the latent weights (fake quant off)

inward_cos > 0: a descent step moves the latent weights toward w_fp. Paper B predicts it
positive while Q(w) is outside the basin and larger than inward_cos_fp (≈ 0 in a flat basin).

**Basin re-entry**, with `eval_modes.basin_level` at the switch on the periodic batches:

    L_ref = the FP-mode validation loss at the switch
    ε     = max(0.01 nats, 2 · SE),  SE the standard error over those batches of the per-batch
            PTQ gap L(Q_RTN(w_fp)) − L(w_fp)
    T_enter = the first QAT-phase evaluation step s with  L_qat(s) ≤ L_ref + ε

`outside` = (PTQ gap > ε): the quantized point started outside the basin (paper B's setting).

Records: `basin_reference` at the switch, the cosines on every QAT-phase `eval` line, one
`basin_reentry`, and `basin_reentry_step` in result.json. Training is unchanged (no RNG drawn,
no training batch read; tests/test_basin.py). Memory: one copy of the QAT layers' weights, or
none when the teacher holds them (`basin_reference_bytes`). Resume: L_ref, ε, SE, the gap and
T_enter are the callback's state; w_fp is read again from the switch checkpoint or `--model`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from ..eval_modes import basin_level, batch_losses, eval_mode
from ..prepare import qat_layers
from .callbacks import TrainingCallback
from .distill import make_loss
from .resume import switch_weights
from .step import loss_fn

logger = logging.getLogger(__name__)

Loss = Callable[[nn.Module, mx.array, mx.array], mx.array]


def ste_gradients(model: nn.Module, loss: Loss, batch: mx.array) -> dict[str, mx.array]:
    """{QAT layer path: ∂loss/∂weight} on `batch` ((B, T+1) tokens), fake quant as it is."""
    _, grads = nn.value_and_grad(model, loss)(model, batch[:, :-1], batch[:, 1:])
    flat = dict(tree_flatten(grads))
    return {p: flat[f"{p}.weight"] for p, _ in qat_layers(model)}


def _cos(dot: float, gg: float, dd: float) -> float | None:
    return dot / math.sqrt(gg * dd) if gg > 0 and dd > 0 else None


def inward_cosines(
    grads: dict[str, mx.array], ref: dict[str, mx.array], quantized: dict[str, mx.array]
) -> tuple[float | None, dict[str, float | None]]:
    """(cos(−g, w_fp − Q(w)) over all layers together, {layer: its own cosine})."""
    sums = {}
    for p, w_fp in ref.items():
        g = grads[p].astype(mx.float32)
        d = w_fp.astype(mx.float32) - quantized[p].astype(mx.float32)
        sums[p] = mx.stack([-(g * d).sum(), (g * g).sum(), (d * d).sum()])
    mx.eval(sums)
    sums = {p: np.array(v, dtype=np.float64) for p, v in sums.items()}
    total = sum(sums.values()) if sums else np.zeros(3)
    return _cos(*total), {p: _cos(*s) for p, s in sums.items()}


def track_reentry(state: dict, step: int, ev: dict, metrics) -> bool:
    """Record the first re-entry (`ev`'s QAT loss ≤ ref_loss + eps) in `state` and the
    metrics; returns whether this was it."""
    qat = (ev.get("qat") or {}).get("loss")
    if state.get("reentry_step") is not None or state.get("ref_loss") is None or qat is None:
        return False
    level = state["ref_loss"] + state["eps"]
    if not qat <= level:
        return False
    state["reentry_step"] = step
    after = step - state["switch_step"]
    metrics.write({"kind": "basin_reentry", "step": step, "qat_loss": qat, "level": level,
                   "ref_loss": state["ref_loss"], "eps": state["eps"],
                   "steps_after_switch": after})  # fmt: skip
    logger.info("basin re-entry at step %d (%d after the switch): QAT loss %.4f <= %.4f",
                step, after, qat, level)  # fmt: skip
    return True


class BasinMonitor(TrainingCallback):
    """The monitor of one run: `state` (L_ref, ε, SE, gap, T_enter; "basin" in checkpoints)
    and `ref` ({QAT layer path: w_fp})."""

    name = "basin"

    def __init__(self, ref: dict[str, mx.array] | None = None):
        self.ref = ref
        self.state: dict | None = None  # None until the switch

    def state_dict(self) -> dict | None:
        return self.state

    def load_state_dict(self, state: dict | None) -> None:
        self.state = state

    def on_train_begin(self, t) -> None:
        if t.phase != "qat":
            return
        self.ref = reference_weights(t, at_switch=False)
        if self.state is None:
            logger.warning(
                "basin monitor: the checkpoint has no basin reference (the monitor was off at "
                "the switch): inward cosines only, no re-entry step"
            )

    def on_phase_switch(self, t) -> None:
        self.begin(t)

    def on_eval(self, t, step: int, info: dict) -> dict | None:
        return self.observe(t, info)

    def on_train_end(self, t, result: dict) -> dict | None:
        st = self.state
        return {"basin_reentry_step": st.get("reentry_step") if st else None, "basin": st}

    def measure(self, t, loss: Loss | None = None) -> dict:
        """The inward cosines of `t`'s model now, of the training objective (or `loss`)."""
        model, batch = t.model, t.val[0]
        loss = loss or make_loss(t.teacher, t.cfg) or loss_fn
        quantized = {p: layer.effective_weight() for p, layer in qat_layers(model)}
        cos, layers = inward_cosines(ste_gradients(model, loss, batch), self.ref, quantized)
        with eval_mode(model, "fp"):
            cos_fp, _ = inward_cosines(ste_gradients(model, loss, batch), self.ref, quantized)
        return {"inward_cos": cos, "inward_cos_fp": cos_fp, "inward_cos_layers": layers}

    def begin(self, t) -> None:
        """At the switch: keep w_fp, measure L_ref, ε, the PTQ gap; write `basin_reference`."""
        self.ref = reference_weights(t, at_switch=True)
        model, bpt = t.model, t.bytes_per_token
        with eval_mode(model, "fp"):
            fp_mean, fp = batch_losses(model, t.val, bpt)
        try:
            with eval_mode(model, "ptq"):
                q_mean, q = batch_losses(model, t.val, bpt)
        except ValueError:  # no MLX format to round to (1-bit sign quantizers): the QAT grid
            q_mean, q = batch_losses(model, t.val, bpt)
        eps, se = basin_level(q, fp)
        gap = q_mean - fp_mean
        self.state = {
            "switch_step": t.step,
            "ref_loss": t.last_eval["fp"]["loss"],
            "eps": eps,
            "noise_se": se,
            "ptq_gap": gap,
            "outside": gap > eps,
            "reentry_step": None,
        }
        t.metrics.write({"kind": "basin_reference", "step": t.step, **self.state,
                         **self.measure(t)})  # fmt: skip
        logger.info("basin monitor: L_ref %.4f, eps %.4f, PTQ gap %.4f (%s the basin)",
                    self.state["ref_loss"], eps, gap, "outside" if gap > eps else "inside")  # fmt: skip

    def observe(self, t, ev: dict) -> dict:
        """At a periodic evaluation: the cosines for its line ({} before the switch)."""
        if t.phase != "qat":
            return {}
        out = self.measure(t)
        if self.state is not None:
            track_reentry(self.state, t.step, ev, t.metrics)
        return out


def basin_monitor_for(cfg, plan) -> BasinMonitor | None:
    """The monitor of a run (None when off, or without a fake-quant QAT phase); ValueError
    for a from-scratch run without an FP phase (no float model to compare with)."""
    if not cfg.basin_monitor:
        return None
    if cfg.ablate_qat or plan.qat_steps == 0:
        logger.info("basin monitor: off (no fake-quant QAT phase in this run)")
        return None
    if not cfg.model and plan.fp_steps == 0:
        raise ValueError(
            "basin_monitor: the reference is the float model at the FP->QAT switch, and this "
            "run has no FP phase; give --model DIR (fine-tuning), a --qat-fraction below 1, "
            "or leave out --basin-monitor"
        )
    return BasinMonitor()


def _teacher_is_reference(cfg, plan) -> bool:
    """Whether a distillation teacher holds exactly the switch weights, in their own dtype."""
    return (
        cfg.objective != "ce"
        and cfg.teacher_dtype is None
        and (not cfg.model or plan.fp_steps == 0)
    )


def basin_reference_bytes(cfg, model: nn.Module, plan) -> int:
    """Bytes the monitor's reference copy adds to a run (`memory.check_step_memory`)."""
    if not cfg.basin_monitor or plan.qat_steps == 0 or _teacher_is_reference(cfg, plan):
        return 0
    return sum(layer.weight.nbytes for _, layer in qat_layers(model))


def reference_weights(t, at_switch: bool) -> dict[str, mx.array]:
    """{QAT layer path: its float weight at the switch}: the model's own (at the switch), the
    teacher's when it holds exactly them, else from `--model` or the switch checkpoint."""
    own = {p: layer.weight for p, layer in qat_layers(t.model)}

    def pick(flat: dict) -> dict[str, mx.array]:
        return {p: flat[f"{p}.weight"] for p in own}

    if t.teacher is not None and _teacher_is_reference(t.cfg, t.plan):  # no second copy
        return pick(dict(tree_flatten(t.teacher.parameters())))
    if at_switch:  # arrays are immutable: the optimizer's updates replace, never change them
        return own
    if t.plan.fp_steps == 0:  # a fine-tune from step 0: the --model weights
        return pick(dict(tree_flatten(t.float_model().parameters())))
    return switch_weights(t, own, pick, "basin reference weights")  # own: the layout
