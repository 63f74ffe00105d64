"""Parameter counts, bits and bytes of a (prepared) model. Two figures, for two uses:

- `parameter_bytes`: the planner's byte count for S = D / bytes (paper 000: N·B/8 computed per
  tensor). A quantized weight counts `bits · numel / 8` at its own nominal bits (no scales); a
  float tensor counts its dtype's bytes. Quantizer parameters (LSQ α, learned scale/bias) exist
  only during training and are not counted.
- `size_report`: what the exported model stores, per layer: packed codes + scales (+ biases)
  exactly as `quantize` lays them out, so `total_bytes` equals the summed `nbytes` of the
  quantized model's parameters.

Both accept a float model plus a `QATConfig` (what `prepare` would do), a prepared model, or
a quantized one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..layers import QATLayer
from ..qat_config import QATConfig
from ..quant.spec import QuantSpec

__all__ = ["LayerSize", "ParameterBytes", "SizeReport", "parameter_bytes", "size_report"]


@dataclass(frozen=True)
class LayerSize:
    """One quantizable layer in the exported model."""

    path: str
    kind: str  # class name of the layer as it is now
    params: int  # logical weight elements plus bias elements
    spec: QuantSpec | None  # export format of the weight; None for a float layer
    bytes: int  # packed weight, scales, biases and the float bias
    embedding: bool  # embedding tables and output heads

    bits_per_weight = property(lambda self: 8 * self.bytes / self.params if self.params else 0.0)


@dataclass
class SizeReport:
    """Per-layer and total size of the model as exported."""

    layers: list[LayerSize] = field(default_factory=list)
    other_params: int = 0  # norms, biases of non-candidate modules, ...
    other_bytes: int = 0

    total_params = property(lambda self: self.other_params + sum(s.params for s in self.layers))
    total_bytes = property(lambda self: self.other_bytes + sum(s.bytes for s in self.layers))

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per parameter over the whole model (mlx-lm's figure)."""
        return 8 * self.total_bytes / self.total_params if self.total_params else 0.0

    def __str__(self) -> str:
        rows = [f"{'layer':<48} {'format':<12} {'params':>10} {'bytes':>10} {'bpw':>6}"]
        for s in self.layers:
            fmt = str(s.spec) if s.spec else "float"
            rows.append(
                f"{s.path:<48} {fmt:<12} {s.params:>10} {s.bytes:>10} {s.bits_per_weight:>6.2f}"
            )
        rows.append(f"{'(other)':<48} {'float':<12} {self.other_params:>10} {self.other_bytes:>10}")
        rows.append(
            f"{'total':<48} {'':<12} {self.total_params:>10} {self.total_bytes:>10} "
            f"{self.bits_per_weight:>6.2f}"
        )
        return "\n".join(rows)


@dataclass(frozen=True)
class ParameterBytes:
    """The planner's model size."""

    n_params: int  # all model parameters (quantized weights counted unpacked)
    n_params_no_embed: int  # without embedding tables and output heads
    bytes: float  # Σ over tensors of nominal bits · numel / 8 (float tensors at their dtype)

    bits_per_param = property(lambda self: 8 * self.bytes / self.n_params if self.n_params else 0.0)


@dataclass(frozen=True)
class _Layer:
    path: str
    module: nn.Module
    shape: tuple[int, ...]  # logical weight shape
    spec: QuantSpec | None
    scale_dtype: mx.Dtype | None  # affine scale/bias storage dtype
    embedding: bool


def _layers(model: nn.Module, config: QATConfig | None) -> list[_Layer]:
    from ..prepare import prepare_report

    config = config or QATConfig()
    by_path = dict(model.named_modules())
    # Module order (as `named_modules` lists it, reversed) rather than string order.
    order = {p: i for i, p in enumerate(list(by_path)[::-1])}
    report = prepare_report(model, config)
    # Once a model holds QAT or quantized layers, `prepare` has run: its float layers are
    # float by decision, and `config` must not be applied to them again.
    converted = any(isinstance(m, QATLayer) or "scales" in m for m in by_path.values())
    out = []
    for d in sorted(report.quantized + report.skipped, key=lambda d: order[d.path]):
        m = by_path[d.path]
        shape, spec, sdt = d.shape, d.spec, None
        if isinstance(m, QATLayer):
            sdt = m.quantizer.scale_dtype or m.weight.dtype
        elif "scales" in m:  # stock quantized module: unpack the logical shape
            spec = QuantSpec(getattr(m, "mode", "affine"), m.bits, m.group_size)
            shape = (*m.weight.shape[:-1], m.weight.shape[-1] * 32 // m.bits)
            sdt = m.scales.dtype
        elif converted:  # float layer of a prepared/quantized model: it stays float
            spec = None
        elif spec is not None:
            sdt = config.mx_scale_dtype or m.weight.dtype
        out.append(_Layer(d.path, m, shape, spec, sdt, config.is_embedding_like(d.path, m)))
    return out


def _weight_bytes(layer: _Layer) -> int:  # packed codes + scales (+ biases)
    n = math.prod(layer.shape)
    spec = layer.spec
    if spec is None:
        return n * layer.module.weight.dtype.size
    packed = n * spec.bits // 32 * 4  # uint32 words; MLX packs rows into whole words
    groups = n // spec.group_size
    if spec.is_affine:
        return packed + 2 * groups * layer.scale_dtype.size
    return packed + groups  # fp modes: one uint8 scale per group, no bias


def _extra_params(m: nn.Module) -> list[mx.array]:
    """A layer's arrays other than its weight/scales/biases and quantizer state."""
    return [
        v
        for name, v in tree_flatten(m.parameters())
        if name.split(".")[0] not in ("weight", "scales", "biases")
        and not name.startswith("quantizer.")
    ]


def _others(model: nn.Module, layers: list[_Layer]) -> list[mx.array]:
    """Model arrays outside the candidate layers (and never quantizer parameters)."""
    owned = {layer.path for layer in layers}
    out = []
    for name, v in tree_flatten(model.parameters()):
        parts = name.split(".")
        if "quantizer" not in parts and not any(
            ".".join(parts[:i]) in owned for i in range(1, len(parts))
        ):
            out.append(v)
    return out


def size_report(model: nn.Module, config: QATConfig | None = None) -> SizeReport:
    """Per-layer params, format and stored bytes of `model` (float, prepared or quantized)
    once exported. `config`: what `prepare` would do to a float model (default `QATConfig()`);
    of a prepared or quantized model only its embedding/head naming is used."""
    layers = _layers(model, config)
    report = SizeReport()
    for layer in layers:
        extra = _extra_params(layer.module)
        params = math.prod(layer.shape) + sum(v.size for v in extra)
        nbytes = _weight_bytes(layer) + sum(v.nbytes for v in extra)
        kind = type(layer.module).__name__
        report.layers.append(
            LayerSize(layer.path, kind, params, layer.spec, nbytes, layer.embedding)
        )
    for v in _others(model, layers):
        report.other_params += v.size
        report.other_bytes += v.nbytes
    return report


def parameter_bytes(model: nn.Module, config: QATConfig | None = None) -> ParameterBytes:
    """N, N without embeddings, and Σ bits·numel/8 (the planner's S = D / bytes denominator)
    of `model` with `config`, as in `size_report`."""
    layers = _layers(model, config)
    n = n_embed = 0
    nbytes = 0.0
    for layer in layers:
        numel = math.prod(layer.shape)
        extra = _extra_params(layer.module)
        size = numel + sum(v.size for v in extra)
        n += size
        n_embed += size if layer.embedding else 0
        if layer.spec is None:
            nbytes += numel * layer.module.weight.dtype.size
        else:
            nbytes += layer.spec.bits * numel / 8
        nbytes += sum(v.nbytes for v in extra)
    for v in _others(model, layers):
        n += v.size
        nbytes += v.nbytes
    return ParameterBytes(n, n - n_embed, nbytes)
