"""Moving a model's quantized layers to points around their float weights, and evaluating there.

For every covered layer a `Probe` keeps the float weight w and its round-to-nearest point
Q(w) = `MinMaxQuantizer(spec, scale_dtype)(w)`, the grid `eval_modes`'s "ptq" mode evaluates.
A point along a direction d is computed in float32 and cast back to the weight's dtype:

    quantization direction   (1 − α)·w + α·Q(w)     (exactly w at α = 0 and Q(w) at α = 1)
    any other direction d    w + α·d

The model runs with fake quant off (`eval_mode(model, "fp")`); `restore()` puts every w back.

Random directions have, in every quantization group, the Euclidean norm of that group's
rounding error ‖Q(w)_g − w_g‖ and a uniformly random orientation (a Gaussian draw rescaled per
group). Stochastic rounding (affine formats) keeps each group's min/max grid (s, b, float32, as
`affine.py`) and rounds the code x = (w − b)/s up with probability x − ⌊x⌋, else down (clipped
to the grid), dequantized as the min/max quantizer does: unbiased in expectation.
"""

from __future__ import annotations

from collections.abc import Iterable

import mlx.core as mx
import mlx.nn as nn

from ..quant.affine import dequantize_codes, group, minmax_params
from ..quant.quantizers import MinMaxQuantizer
from ..quant.spec import QuantSpec


def stochastic_round(
    w: mx.array, spec: QuantSpec, key: mx.array, scale_dtype: mx.Dtype | None = None
) -> mx.array:
    """One stochastic rounding of `w` on its affine `spec` min/max grid (rules in the module
    header), in w's shape and dtype; the same `key` gives the same rounding."""
    if not spec.is_affine:
        raise ValueError(f"stochastic rounding: {spec} is not an affine format")
    wg = group(w, spec.group_size).astype(mx.float32)
    s, b = minmax_params(wg, spec.bits)
    x = (wg - b) / s
    low = mx.floor(x)
    up = mx.random.uniform(shape=x.shape, key=key) < (x - low)
    code = mx.clip(low + up.astype(mx.float32), 0.0, float(2**spec.bits - 1))
    # As MinMaxQuantizer: scales stored in another dtype are dequantized in that dtype.
    dt = w.dtype if scale_dtype is None or scale_dtype == w.dtype else scale_dtype
    out = dequantize_codes(code, s, b, dt)
    return out.astype(w.dtype).reshape(w.shape)


def matched_random(w: mx.array, q: mx.array, group_size: int, key: mx.array) -> mx.array:
    """A random direction with each group's norm equal to that of Q(w) − w (w's dtype)."""
    e = group(q.astype(mx.float32) - w.astype(mx.float32), group_size)
    u = mx.random.normal(shape=e.shape, key=key)
    e_norm = mx.sqrt((e * e).sum(axis=-1, keepdims=True))
    u_norm = mx.sqrt((u * u).sum(axis=-1, keepdims=True))
    xi = u * (e_norm / mx.maximum(u_norm, 1e-30))
    return xi.reshape(w.shape).astype(w.dtype)


class Probe:
    """The covered layers {path: (QAT layer, spec)} of `model`: their float weights, RTN
    points (scales stored in `scale_dtype`, None: each weight's dtype), and moves between."""

    def __init__(
        self,
        model: nn.Module,
        layers: dict[str, tuple[nn.Module, QuantSpec]],
        scale_dtype: mx.Dtype | None = None,
    ):
        self.model = model
        self.layers = {p: layer for p, (layer, _) in layers.items()}
        self.specs = {p: spec for p, (_, spec) in layers.items()}
        self.scale_dtype = scale_dtype
        self.w0 = {p: layer["weight"] for p, layer in self.layers.items()}
        self.q = {p: self.rtn(p, self.specs[p]) for p in self.layers}
        mx.eval(self.q)

    def rtn(self, path: str, spec: QuantSpec) -> mx.array:
        """Round-to-nearest of layer `path`'s float weight at `spec` (the PTQ grid)."""
        return MinMaxQuantizer(spec, self.scale_dtype)(self.w0[path])

    @property
    def paths(self) -> list[str]:
        return list(self.layers)

    def set(self, points: dict[str, mx.array]) -> None:
        """Layers named in `points` get those weights; every other covered layer its w."""
        for p, layer in self.layers.items():
            layer.weight = points.get(p, self.w0[p])
        mx.eval([layer["weight"] for layer in self.layers.values()])

    def restore(self) -> None:
        """Every covered layer back at its float weight."""
        for p, layer in self.layers.items():
            layer.weight = self.w0[p]

    def along(
        self,
        alpha: float,
        direction: dict[str, mx.array] | None = None,
        only: Iterable[str] | None = None,
    ) -> None:
        """Move the layers in `only` (default all) by α along `direction` (default Q(w) − w)."""
        points = {}
        for p in only if only is not None else self.layers:
            w = self.w0[p]
            if direction is None:
                if alpha == 0:
                    points[p] = w
                elif alpha == 1:
                    points[p] = self.q[p]
                else:
                    wf, qf = w.astype(mx.float32), self.q[p].astype(mx.float32)
                    points[p] = ((1 - alpha) * wf + alpha * qf).astype(w.dtype)
            else:
                d = direction[p].astype(mx.float32)
                points[p] = (w.astype(mx.float32) + alpha * d).astype(w.dtype)
        self.set(points)

    def random_direction(self, key: mx.array) -> dict[str, mx.array]:
        """`matched_random` for every covered layer, one sub-key per layer (in path order)."""
        keys = mx.random.split(key, len(self.layers))
        return {
            p: matched_random(self.w0[p], self.q[p], self.specs[p].group_size, keys[i])
            for i, p in enumerate(self.layers)
        }

    def stochastic_point(self, key: mx.array) -> dict[str, mx.array]:
        """One stochastic rounding of every covered layer (all must be affine)."""
        keys = mx.random.split(key, len(self.layers))
        return {
            p: stochastic_round(self.w0[p], self.specs[p], keys[i], self.scale_dtype)
            for i, p in enumerate(self.layers)
        }
