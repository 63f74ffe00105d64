"""Transition-rate scheduling (TRS, paper 001: Lee et al., "Scheduling Weight Transitions for
Quantization-Aware Training", ICCV 2025, arXiv 2404.19248) and the QAT step's update.

With `lr_control: trs`, the quantized latent weights (every QAT layer's `weight`) are not
moved at the scheduled LR but at a transition-adaptive LR U, steered so that the EMA K of the
transition rate (`transitions.py`) follows a target R. At QAT step t = 0, 1, … (t counted from
the switch, T = the QAT phase's steps):

    w_l ← AdamW(w_l; lr = U_l)                    this step's update, at the current U
    k, K ← transitions.py                          K = m·K + (1 − m)·k (K_l per layer)
    R(t) = ½·R0·(1 + cos(π·min(t/T, 1))),  R0 = λ·√bits   (per layer; the global R0 is their
                                                    mean weighted by weight count)
    U ← max(0, U + η·(R(t) − K))                    U for the next step
    t ← t + 1

U0 = the scheduled LR at the start of the QAT phase (after the classic pipeline's re-warmup)
and η = U0, unless `trs_u0` / `trs_eta` say otherwise. `trs_granularity: global` keeps one U
driven by the overall K; `layer` keeps U_l, K_l per QAT layer. K measures the update about to
be applied (codes before vs after it), so k of update t feeds U for update t + 1: the paper's
Eq. 10–12 with the index shifted by one, without storing the old codes.

The update is exactly AdamW at lr = U (`apply_single` with U as the sub-optimizer's LR), not the
"unit-LR trick" p + U·(p₁ − p): MLX's AdamW is linear in lr, but the trick's subtraction and
re-addition round, so it would not reproduce AdamW at lr = U bit for bit. Every other
parameter keeps the scheduled LR. Weight-quantizer parameters are frozen while TRS runs, as the
paper requires (else codes change when only the grid moves): the grid stays where
`init_quantizers` put it at the switch, with no gradient (nor a share of the clip). The min/max
quantizer's grid follows each group's min/max; those moves count as transitions too.

The state (U, t, R, and the statistics') is a dict of arrays inside the compiled step, saved in
every checkpoint's state.json (float32 round-trips exactly through JSON): resume is bit for bit.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from .callbacks import TrainingCallback
from .config import GRANULARITIES
from .transitions import Transitions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TRSSettings:
    """The controller's constants: λ, U0, η, T (the QAT phase's steps), granularity."""

    lam: float
    u0: float
    eta: float
    steps: int
    granularity: str = "global"


def _state_at(tree, key: str) -> dict:
    for part in key.split("."):
        tree = tree[int(part)] if isinstance(tree, (list, tuple)) else tree[part]
    return tree


def _layer_bits(layer) -> int:
    # LSQ keeps its own bits (1 = sign, 2 = SEQ); every other quantizer its spec's
    return int(getattr(layer.quantizer, "bits", layer.quantizer.spec.bits))


class TRS:
    """The controller and the update at lr = U of the layers of `stats` (a `Transitions`)."""

    def __init__(self, stats: Transitions, settings: TRSSettings):
        if settings.granularity not in GRANULARITIES:
            raise ValueError(
                f"trs_granularity={settings.granularity!r}: choose one of "
                f"{', '.join(GRANULARITIES)}"
            )
        self.stats, self.settings = stats, settings
        self.layer_mode = settings.granularity == "layer"
        r0 = [settings.lam * math.sqrt(_layer_bits(layer)) for _, layer in stats.layers]
        # a plain float (list): an array made outside the compiled step would be an input
        self.r0 = (
            r0 if self.layer_mode else sum(r * n for r, n in zip(r0, stats.sizes)) / stats.total
        )
        shape = (len(stats.layers),) if self.layer_mode else ()
        self.state: dict[str, mx.array] = {
            "U": mx.full(shape, settings.u0, dtype=mx.float32),
            "t": mx.array(0, dtype=mx.int32),
            "target": mx.array(self.r0, dtype=mx.float32),
        }

    def target(self, t: mx.array) -> mx.array:
        """R(t) = ½·R0·(1 + cos(π·min(t/T, 1))) (float32; per layer in layer mode)."""
        frac = mx.minimum(t.astype(mx.float32) / max(self.settings.steps, 1), 1.0)
        r0 = mx.array(self.r0, dtype=mx.float32)
        return 0.5 * r0 * (1.0 + mx.cos(math.pi * frac))

    def control(self) -> None:
        """After the update and `stats.after`: U ← max(0, U + η(R(t) − K)); t ← t + 1."""
        st, ts = self.state, self.stats.state
        r = self.target(st["t"])
        k_ema = ts["ema_layers"] if self.layer_mode else ts["ema"]
        st["U"] = mx.maximum(st["U"] + self.settings.eta * (r - k_ema), 0.0).astype(mx.float32)
        st["target"], st["t"] = r, st["t"] + 1

    def apply(self, model: nn.Module, optimizer, grads) -> None:
        """Every parameter but the quantized weights at the scheduled LR (one `optimizer.update`,
        which also advances each group's step), then each quantized weight by its group's
        `apply_single` at lr = U (or U_l)."""
        flat = dict(tree_flatten(grads))
        keys = [f"{path}.weight" for path, _ in self.stats.layers]
        rest = [(k, g) for k, g in flat.items() if k not in set(keys)]
        optimizer.update(model, tree_unflatten(rest) if rest else {})
        subs = getattr(optimizer, "optimizers", [optimizer])
        filters = getattr(optimizer, "filters", [lambda *a: True])
        saved = [o.state["learning_rate"] for o in subs]
        u = self.state["U"]
        for i, ((_, layer), key) in enumerate(zip(self.stats.layers, keys)):
            if key not in flat:  # a weight someone froze: not trained
                continue
            w = layer["weight"]
            sub = subs[next(j for j, f in enumerate(filters) if f(key, w))]
            sub.state["learning_rate"] = u[i] if self.layer_mode else u
            layer.weight = sub.apply_single(flat[key], w, _state_at(sub.state, key))
        for o, lr in zip(subs, saved):
            o.state["learning_rate"] = lr

    def record(self) -> dict:
        st, paths = self.state, self.stats.paths
        out = {"trs_target": _weighted(st["target"], self.stats), "trs_t": st["t"].item()}
        out["trs_u"] = _weighted(st["U"], self.stats)
        if self.layer_mode:
            out["trs_u_layers"] = dict(zip(paths, st["U"].tolist()))
        return out

    def to_json(self) -> dict:
        return {k: v.tolist() for k, v in self.state.items()}

    def load_json(self, saved: dict) -> None:
        for k, v in self.state.items():
            self.state[k] = mx.array(saved[k], dtype=v.dtype)


def _weighted(x: mx.array, stats: Transitions) -> float:
    """A scalar, or the weight-count-weighted mean of a per-layer array."""
    if x.ndim == 0:
        return x.item()
    return sum(v * n for v, n in zip(x.tolist(), stats.sizes)) / stats.total


class QATUpdate:
    """The optimizer update of a QAT step (`make_step(update=...)`): the plain one or TRS's,
    with the transition statistics around it; `state` is a compile input and output."""

    def __init__(self, stats: Transitions, trs: TRS | None = None):
        self.stats, self.trs = stats, trs
        self.state = {"transitions": stats.state}
        if trs is not None:
            self.state["trs"] = trs.state

    def __call__(self, model: nn.Module, optimizer, grads) -> None:
        before = self.stats.before()
        if self.trs is None:
            optimizer.update(model, grads)
        else:
            self.trs.apply(model, optimizer, grads)
        self.stats.after(before)
        if self.trs is not None:
            self.trs.control()

    def record(self) -> dict:
        """Metrics entries of the last step (host reads: at the log interval only)."""
        out = self.stats.record()
        if self.trs is not None:
            out.update(self.trs.record())
        return out

    def to_json(self) -> dict:
        out = {"transitions": self.stats.to_json()}
        if self.trs is not None:
            out["trs"] = self.trs.to_json()
        return out

    def load_json(self, saved: dict) -> None:
        self.stats.load_json(saved["transitions"])
        if self.trs is not None:
            if "trs" not in saved:
                raise ValueError(
                    "checkpoint: saved without TRS state, but this run has lr_control=trs; "
                    "resume with the run's own config"
                )
            self.trs.load_json(saved["trs"])


def trs_u0(cfg, plan) -> float:
    """U0: `trs_u0`, else the scheduled LR at the start of the QAT phase, past any warmup (the
    classic re-warmup, or the run's own when QAT starts inside it)."""
    if cfg.trs_u0 is not None:
        return float(cfg.trs_u0)
    start = max(plan.fp_steps + plan.qat_warmup_steps, plan.warmup_steps)
    step = min(start, plan.total_steps - 1)
    return float(plan.lr_at(step))


def make_qat_update(model: nn.Module, cfg, plan, saved: dict | None = None) -> QATUpdate:
    """The QAT phase's update, from a checkpoint's `saved` state if given; with TRS, freezes
    the weight quantizers."""
    stats = Transitions(model, cfg.trs_momentum)
    trs = None
    if cfg.lr_control == "trs":
        u0 = trs_u0(cfg, plan)
        eta = u0 if cfg.trs_eta is None else float(cfg.trs_eta)
        settings = TRSSettings(cfg.trs_lambda, u0, eta, plan.qat_steps, cfg.trs_granularity)
        trs = TRS(stats, settings)
        for _, layer in stats.layers:
            layer.quantizer.freeze()
        logger.info(
            "TRS: quantized weights at U (U0 %.3g, eta %.3g, R0 = %.3g*sqrt(bits), %s); "
            "weight-quantizer parameters frozen at their switch values",
            u0, eta, cfg.trs_lambda, cfg.trs_granularity,
        )  # fmt: skip
    update = QATUpdate(stats, trs)
    if saved is not None:
        update.load_json(saved)
    return update


class QATUpdates(TrainingCallback):
    """The QAT phase's update as a trainer feature: the `QATUpdate` of each compiled step, its
    statistics on the "train" records, its state in checkpoints ("qat_update")."""

    name = "qat_update"

    def __init__(self):
        self.update: QATUpdate | None = None
        self._saved: dict | None = None  # a checkpoint's, until the update continues from it

    def update_for(self, t) -> QATUpdate | None:
        """The update of `t`'s next compiled step: a `QATUpdate` in the QAT phase with fake
        quant on (continuing a checkpoint's state), else None (the plain optimizer update)."""
        saved, self._saved = self._saved, None
        cfg = t.cfg
        self.update = None
        if t.phase != "qat" or cfg.ablate_qat:
            if t.phase == "qat" and cfg.lr_control == "trs":
                logger.info("TRS: off with fake quant off (ablate_qat): the schedule's LR is used")
            return None
        self.update = make_qat_update(t.model, cfg, t.plan, saved)
        return self.update

    def on_step_end(self, t, step: int, info: dict | None) -> dict | None:
        # host reads of the statistics: only at a step that writes a record
        return self.update.record() if info is not None and self.update else None

    def state_dict(self) -> dict | None:
        return self.update.to_json() if self.update else self._saved

    def load_state_dict(self, state: dict | None) -> None:
        self._saved = state
