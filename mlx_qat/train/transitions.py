"""Transition statistics of a QAT step: how many integer codes one optimizer update changed.

For QAT layer l with N_l quantized weights and codes c (`mlx_qat.quant.codes`: the integer
each weight rounds to, on the layer's grid, exactly as its quantizer rounds) taken before and
after one optimizer update (weights and grid parameters both before / both after):

    k_l = (1/N_l)·Σ_i [c_after(i) ≠ c_before(i)]          per-layer transition rate
    k   = Σ_l N_l·k_l / Σ_l N_l                             overall, weighted by weight count
    K   ← m·K + (1 − m)·k,   K_l ← m·K_l + (1 − m)·k_l      EMAs (K = 0 at the switch; m =
                                                            `trs_momentum`, default 0.99)
    d   = mean of |frac(u) − ½| over the weights inside their grid's range, after the update
                                                            (distance to the nearest transition
                                                            point in grid steps, 0…½)

Counts are int32 sums, converted to float32 for the rates. Everything is computed inside the
compiled step as arrays (`state`, a compile input and output); `record()` reads them back, at
the log interval only. With several processes the statistics are identical on every rank;
with gradient accumulation they are taken once per optimizer step.

Falling d together with a rising k at a constant LR is the oscillation signature of paper 001
(§1.9 of the research notes); TRS (`trs.py`) steers K to a target instead of fixing the LR.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ..layers import QATLayer
from ..prepare import qat_layers
from ..quant.codes import code_position, quantizer_params, transition_distance


class Transitions:
    """The transition statistics of a prepared model's QAT layers, EMA momentum m. Inside the
    step: `before = t.before()`, apply the update, `t.after(before)`."""

    def __init__(self, model: nn.Module, momentum: float = 0.99):
        self.layers: list[tuple[str, QATLayer]] = list(qat_layers(model))
        if not self.layers:
            raise ValueError("transition statistics: the model has no QAT layers")
        self.sizes = [layer["weight"].size for _, layer in self.layers]
        self.total = float(sum(self.sizes))
        self.momentum = float(momentum)
        n = len(self.layers)
        z = mx.array(0.0, dtype=mx.float32)
        self.state: dict[str, mx.array] = {
            "rate": z,
            "rate_layers": mx.zeros((n,), dtype=mx.float32),
            "ema": z,
            "ema_layers": mx.zeros((n,), dtype=mx.float32),
            "distance": z,
        }

    @property
    def paths(self) -> list[str]:
        return [p for p, _ in self.layers]

    def before(self) -> list[mx.array]:
        """Codes of every QAT layer on its current weights and grid."""
        out = []
        for _, layer in self.layers:
            q = layer.quantizer
            out.append(code_position(q, layer["weight"], quantizer_params(q))[0])
        return out

    def after(self, before: list[mx.array]) -> mx.array:
        """Compare with the codes after the update; update `state`; return k_l (L,)."""
        changed, dist, inside = [], [], []
        for (_, layer), c0 in zip(self.layers, before):
            c1, u, lo, hi = code_position(layer.quantizer, layer["weight"])
            changed.append((c1 != c0).sum())
            s, n = transition_distance(u, lo, hi)
            dist.append(s)
            inside.append(n)
        counts = mx.stack(changed).astype(mx.float32)
        k_layers = counts / mx.array(self.sizes, dtype=mx.float32)
        k = counts.sum() / self.total
        m = self.momentum
        st = self.state
        st["rate"], st["rate_layers"] = k, k_layers
        st["ema"] = m * st["ema"] + (1.0 - m) * k
        st["ema_layers"] = m * st["ema_layers"] + (1.0 - m) * k_layers
        st["distance"] = mx.stack(dist).sum() / mx.maximum(mx.stack(inside).sum(), 1.0)
        return k_layers

    def record(self) -> dict:
        """The metrics entries (host reads: at the log interval only)."""
        st = self.state
        layers = st["rate_layers"].tolist()
        return {
            "transition_rate": st["rate"].item(),
            "transition_rate_ema": st["ema"].item(),
            "transition_rate_layers": {p: round(r, 7) for p, r in zip(self.paths, layers)},
            "transition_distance": st["distance"].item(),
        }

    def to_json(self) -> dict:
        return {"layers": self.paths, **{k: v.tolist() for k, v in self.state.items()}}

    def load_json(self, saved: dict) -> None:
        if saved.get("layers") != self.paths:
            raise ValueError(
                "transition state: saved for other QAT layers than this model's; resume with "
                "the run's own config"
            )
        for k in self.state:
            self.state[k] = mx.array(saved[k], dtype=mx.float32)
