"""QAT layers: float modules whose forward can run on the fake-quantized weight.

Each layer keeps the float `weight` (and `bias` where the original had one) as trainable
parameters and a `quantizer` submodule (`mlx_qat.quant.quantizers`), so learnable quantizer
parameters train, save and load with the model under keys such as
`model.layers.0.self_attn.q_proj.quantizer.alpha`.

`fake_quant` is a plain Python attribute, not an array: with it off (the FP phase) the forward
is op-for-op the original float module's, so outputs are bit-identical; with it on the forward
uses ŵ = quantizer(weight). A compiled step (`mx.compile`) captures the flag at trace time, so
after `set_fake_quant` the trainer must compile the step again (it does so at the FP→QAT
switch). Making the flag an array would keep one graph but put a select on every weight of
every step, in both phases.

`to_quantized()` returns the stock MLX / mlx-lm module (`nn.QuantizedLinear`,
`nn.QuantizedEmbedding`, `QuantizedSwitchLinear`) holding exactly the grid the fake-quant
forward used (`quantizer.grid(weight)`), never a fresh `mx.quantize`: train = deploy.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import mlx.core as mx
import mlx.nn as nn

from .quant.quantizers import Quantizer, make_quantizer
from .quant.spec import QuantSpec

if TYPE_CHECKING:
    from mlx_lm.models.switch_layers import QuantizedSwitchLinear

# mlx-lm is imported lazily: importing it costs seconds (it pulls in transformers), and a model
# that holds a SwitchLinear has imported it already.
_SWITCH_MODULE = "mlx_lm.models.switch_layers"


class QATLayer(nn.Module):
    """Common part of the QAT layers: float weight, quantizer, `fake_quant` flag."""

    def __init__(self, weight: mx.array, quantizer: Quantizer, fake_quant: bool = True):
        super().__init__()
        self.weight = weight
        self.quantizer = quantizer
        self.fake_quant = fake_quant

    @property
    def spec(self) -> QuantSpec:
        """The MLX format the layer exports to."""
        return self.quantizer.export_spec

    def effective_weight(self) -> mx.array:
        """ŵ when fake quant is on, else the float weight (the array the forward uses)."""
        return self.quantizer(self["weight"]) if self.fake_quant else self["weight"]

    def _holding_grid(self, q: nn.Module) -> nn.Module:
        """`q` (a stock quantized module of this layer's shape) given the trained grid and the
        bias, frozen."""
        q.weight, q.scales, q.biases = self.quantizer.grid(self["weight"])
        if "bias" in self:
            q.bias = self["bias"]
        q.freeze()
        return q

    @classmethod
    def from_float(
        cls,
        module: nn.Module,
        spec: QuantSpec,
        quantizer: str | Quantizer = "minmax",
        fake_quant: bool = True,
        scale_dtype: mx.Dtype | None = None,
        per: str = "row",
        scale_grad: str = "ste",
    ):
        """Wrap the float layer `module` (its weight and bias arrays are shared, not copied).

        Args:
            spec: target MLX format.
            quantizer: a kind for `make_quantizer` ("minmax", "lsq", "learned_affine") or
                a ready quantizer module.
            fake_quant: start with fake quantization on.
            scale_dtype: storage dtype of scales/biases (None: the weight's dtype).
            per: LSQ step granularity, "row" or "group".
            scale_grad: learned_affine's grid gradient, "ste" or "fixed_codes".
        """
        w = module["weight"]
        if isinstance(quantizer, str):
            quantizer = make_quantizer(quantizer, spec, w, scale_dtype, per, scale_grad)
        layer = cls(w, quantizer, fake_quant)
        if "bias" in module:
            layer.bias = module["bias"]
        return layer

    def _extra_repr(self) -> str:
        shape = "x".join(map(str, self.weight.shape))
        return f"{shape}, bias={'bias' in self}, fake_quant={self.fake_quant}"


class QATLinear(QATLayer):
    """`nn.Linear` with an optional fake-quantized weight (out_dims, in_dims)."""

    def __call__(self, x: mx.array) -> mx.array:
        w = self.effective_weight()
        # Same ops as nn.Linear, so fake_quant=False is bit-identical to the float layer.
        if "bias" in self:
            return mx.addmm(self["bias"], x, w.T)
        return x @ w.T

    def to_quantized(self) -> nn.QuantizedLinear:
        """Stock `nn.QuantizedLinear` holding the trained grid."""
        spec, (out_dims, in_dims) = self.spec, self.weight.shape
        return self._holding_grid(
            nn.QuantizedLinear(in_dims, out_dims, False, spec.group_size, spec.bits, mode=spec.mode)
        )


class QATEmbedding(QATLayer):
    """`nn.Embedding` with an optional fake-quantized table (num_embeddings, dims).

    `as_linear` (tied output heads: `model.embed_tokens.as_linear(h)`) uses the same ŵ.
    """

    def __call__(self, x: mx.array) -> mx.array:
        if not self.fake_quant:
            return self["weight"][x]
        return self.quantizer.lookup(self["weight"], x)  # ŵ[x], quantizing only those rows

    def as_linear(self, x: mx.array) -> mx.array:
        """Use the (fake-quantized) table as an output projection: x @ ŵᵀ."""
        return x @ self.effective_weight().T

    def to_quantized(self) -> nn.QuantizedEmbedding:
        """Stock `nn.QuantizedEmbedding` holding the trained grid."""
        spec, (num, dims) = self.spec, self.weight.shape
        return self._holding_grid(
            nn.QuantizedEmbedding(num, dims, spec.group_size, spec.bits, mode=spec.mode)
        )


class QATSwitchLinear(QATLayer):
    """mlx-lm's `SwitchLinear` (expert weights (experts, out, in)) with fake quantization."""

    def __call__(self, x: mx.array, indices: mx.array, sorted_indices: bool = False):
        # Mirrors SwitchLinear.__call__ op for op.
        x = mx.gather_mm(
            x,
            self.effective_weight().swapaxes(-1, -2),
            rhs_indices=indices,
            sorted_indices=sorted_indices,
        )
        if "bias" in self:
            x = x + mx.expand_dims(self["bias"][indices], -2)
        return x

    @property
    def input_dims(self) -> int:
        return self.weight.shape[2]

    @property
    def output_dims(self) -> int:
        return self.weight.shape[1]

    @property
    def num_experts(self) -> int:
        return self.weight.shape[0]

    def to_quantized(self) -> QuantizedSwitchLinear:
        """mlx-lm's `QuantizedSwitchLinear` holding the trained grid (no global scale)."""
        from mlx_lm.models.switch_layers import QuantizedSwitchLinear

        spec, (experts, out_dims, in_dims) = self.spec, self.weight.shape
        return self._holding_grid(
            QuantizedSwitchLinear(
                in_dims, out_dims, experts, False, spec.group_size, spec.bits, mode=spec.mode
            )
        )


def qat_class(module: nn.Module) -> type[QATLayer] | None:
    """The QAT layer type for a float module (exact type match), or None if unsupported."""
    t = type(module)
    if t is nn.Linear:
        return QATLinear
    if t is nn.Embedding:
        return QATEmbedding
    switch = sys.modules.get(_SWITCH_MODULE)
    if switch is not None and t is switch.SwitchLinear:
        return QATSwitchLinear
    return None
