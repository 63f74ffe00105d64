"""Model surgery: float model → QAT model → stock quantized model, in place.

`prepare` swaps `nn.Linear` → `QATLinear`, `nn.Embedding` → `QATEmbedding` and mlx-lm's
`SwitchLinear` → `QATSwitchLinear` the way `mlx.nn.quantize` swaps layers: a map over
`model.leaf_modules()` with paths, then `model.update_modules`. `quantize` swaps the QAT layers
for `nn.QuantizedLinear` / `nn.QuantizedEmbedding` / `QuantizedSwitchLinear` holding the
trained grids. Every candidate layer is either quantized or reported as skipped with a
reason; nothing is skipped silently.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from .layers import QATLayer, qat_class
from .qat_config import QATConfig
from .quant.kernel_check import self_check
from .quant.quantizers import Quantizer
from .quant.spec import QuantSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerDecision:
    """What `prepare` does with one layer: its `spec` (None: left in float) and the `reason`,
    the rule that chose it ("default", "override 'lm_head'", ...) or why it stays in float."""

    path: str
    kind: str
    shape: tuple[int, ...]
    spec: QuantSpec | None
    reason: str


@dataclass
class PrepareReport:
    """Every quantizable layer of a model: the ones quantized and the ones skipped (with why)."""

    quantized: list[LayerDecision] = field(default_factory=list)
    skipped: list[LayerDecision] = field(default_factory=list)

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for d in self.quantized:
            counts[str(d.spec)] = counts.get(str(d.spec), 0) + 1
        specs = ", ".join(f"{n}x {s}" for s, n in counts.items()) or "none"
        return f"{len(self.quantized)} layers quantized ({specs}); {len(self.skipped)} skipped"

    def __str__(self) -> str:
        lines = [self.summary()]
        for d in self.quantized:
            lines.append(f"  Q  {d.path:<48} {d.kind:<16} {str(d.spec):<12} {d.reason}")
        for d in self.skipped:
            lines.append(f"  -  {d.path:<48} {d.kind:<16} {'float':<12} {d.reason}")
        return "\n".join(lines)


def _candidates(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    # leaves mlx-lm could quantize (or with a matrix weight), plus existing QAT layers
    for path, m in model.named_modules()[::-1]:
        if not path or isinstance(m, Quantizer):
            continue
        if isinstance(m, QATLayer):
            yield path, m
            continue
        leaf = not tree_flatten(m.children(), is_leaf=nn.Module.is_module)
        weight = m.get("weight") if leaf else None
        has_matrix = weight is not None and getattr(weight, "ndim", 0) >= 2
        if leaf and (hasattr(m, "to_quantized") or has_matrix):
            yield path, m


def _decide(path: str, m: nn.Module, config: QATConfig, model: nn.Module) -> LayerDecision:
    kind = type(m).__name__
    weight = m.get("weight")
    shape = tuple(weight.shape) if weight is not None else ()
    if isinstance(m, QATLayer):
        return LayerDecision(path, kind, shape, m.spec, "already prepared")
    if "scales" in m:
        return LayerDecision(path, kind, shape, None, "already quantized (stock MLX module)")
    if qat_class(m) is None:
        return LayerDecision(path, kind, shape, None, f"unsupported module type {kind}")
    spec, reason = config.resolve(path, m, model)
    if spec is None:
        return LayerDecision(path, kind, shape, None, reason)
    if shape[-1] % spec.group_size:
        why = f"last dim {shape[-1]} not a multiple of group_size {spec.group_size} ({spec})"
        return LayerDecision(path, kind, shape, None, why)
    return LayerDecision(path, kind, shape, spec, reason)


def prepare_report(model: nn.Module, config: QATConfig) -> PrepareReport:
    """What `prepare(model, config)` does (or did), without changing the model (on a prepared
    model, its QAT layers are listed as "already prepared")."""
    report = PrepareReport()
    for path, m in _candidates(model):
        d = _decide(path, m, config, model)
        (report.quantized if d.spec is not None else report.skipped).append(d)
    return report


def prepare(model: nn.Module, config: QATConfig | None = None, enabled: bool = True) -> nn.Module:
    """Swap the model's float layers for QAT layers, in place (like `nn.quantize`).

    Args:
        model: any MLX model, typically an `mlx_lm.models.<arch>.Model`.
        config: which layers, which formats, which quantizer (default `QATConfig()`).
        enabled: initial `fake_quant` state (False for an FP phase before QAT).

    Returns:
        The same model. The decisions are logged (skips as warnings unless a rule excluded
        the layer); `prepare_report(model, config)` returns them.
    """
    config = config or QATConfig()
    report = prepare_report(model, config)
    new = {}
    by_path = dict(model.named_modules())
    # Every fused kernel this run launches, once per process: never train on a wrong grid.
    uses = [(d.spec, by_path[d.path].weight.dtype) for d in report.quantized]
    self_check(config.quantizer, uses, config.mx_scale_dtype, config.lsq_per)
    for d in report.quantized:
        if isinstance(m := by_path[d.path], QATLayer):
            continue
        new[d.path] = qat_class(m).from_float(
            m,
            d.spec,
            config.quantizer,
            fake_quant=enabled,
            scale_dtype=config.mx_scale_dtype,
            per=config.lsq_per,
            scale_grad=config.scale_grad,
        )
    if new:
        model.update_modules(tree_unflatten(list(new.items())))
    _log_report(report)
    _warn_scale_dtype(config, [layer.weight.dtype for layer in new.values()])
    return model


def _log_report(report: PrepareReport) -> None:
    logger.info("prepare: %s", report.summary())
    for d in report.quantized:
        logger.debug("prepare: %s %s -> %s (%s)", d.path, d.kind, d.spec, d.reason)
    for d in report.skipped:
        level = logging.INFO if d.reason.startswith("excluded by") else logging.WARNING
        logger.log(
            level, "prepare: %s (%s %s) left in float: %s", d.path, d.kind, d.shape, d.reason
        )


def _warn_scale_dtype(config: QATConfig, dtypes: list) -> None:
    sd = config.mx_scale_dtype
    other = sorted({str(d).split(".")[-1] for d in dtypes if sd is not None and d != sd})
    if other:
        name = config.scale_dtype
        logger.warning(
            "prepare: scale_dtype=%s but weights are %s: the exported grid is exact, but "
            "MLX's quantized kernels then run at %s precision, so fake-quant and deployed "
            "outputs agree only to that precision unless the model is cast to %s",
            name, ", ".join(other), name, name,
        )  # fmt: skip


def is_quantizer_param(path: str) -> bool:
    """True for learnable quantizer parameters (`....quantizer.alpha`, `.scale`, `.bias`)."""
    return "quantizer" in path.split(".")


def qat_layers(model: nn.Module) -> Iterator[tuple[str, QATLayer]]:
    """(path, layer) for every QAT layer of `model`, in module order."""
    for path, m in model.named_modules()[::-1]:
        if isinstance(m, QATLayer):
            yield path, m


def set_fake_quant(model: nn.Module, enabled: bool) -> int:
    """Turn fake quantization on or off in every QAT layer; returns how many. The flag is read
    at trace time: recompile any `mx.compile`d step after calling this."""
    layers = [layer for _, layer in qat_layers(model)]
    for layer in layers:
        layer.fake_quant = bool(enabled)
    return len(layers)


def init_quantizers(model: nn.Module) -> int:
    """Re-initialise learnable quantizer parameters from the current weights (at the FP→QAT
    switch, when the weights have moved since `prepare`); returns how many layers."""
    layers = [layer for _, layer in qat_layers(model)]
    for layer in layers:
        layer.quantizer.init_from(layer["weight"])
    return len(layers)


def train_only_grid(model: nn.Module) -> list[str]:
    """Freeze every weight of `model`: only the quantizers' own parameters (a learned grid's
    scale/bias, LSQ's step) and the 1-D parameters outside QAT layers (the norms) stay
    trainable. This is the parameter set mlx-lm's DWQ trains (`mlx_lm.quant.dwq`: its quantized
    layers frozen but for their scales and biases, every norm left trainable), so with the
    fixed-code grid gradient and a `kd` objective QAT *is* DWQ. Unlike DWQ, a layer `prepare`
    left in float keeps its weight frozen too. Returns the trainable paths, sorted.
    """
    keep = set()
    inside = {path for path, _ in qat_layers(model)}
    for path, p in tree_flatten(model.trainable_parameters()):
        owner = path.rpartition(".")[0]
        in_layer = any(owner == q or owner.startswith(q + ".") for q in inside)
        quantizer = "quantizer" in path.split(".")
        if quantizer or (p.ndim == 1 and not in_layer):
            keep.add(path)
    model.freeze()
    for path, m in model.named_modules():
        own = [k.rpartition(".")[2] for k in keep if k.rpartition(".")[0] == path]
        if own:
            m.unfreeze(recurse=False, keys=own)
    return sorted(keep)


def quantize(model: nn.Module) -> nn.Module:
    """Swap every QAT layer for its stock quantized module (trained grid), in place; returns
    the model, now an mlx-lm quantized model."""
    new = {path: layer.to_quantized() for path, layer in qat_layers(model)}
    if not new:
        logger.warning("quantize: the model has no QAT layers; nothing to do")
        return model
    model.update_modules(tree_unflatten(list(new.items())))
    logger.info("quantize: %d QAT layers replaced by stock quantized modules", len(new))
    return model
