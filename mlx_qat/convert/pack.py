"""From the loaded model to the model that gets saved: QAT grids, PTQ, dequantize, dtype.

Where the scale/bias cast happens: in one place, `cast_model`, after the layers are swapped.

* The packed codes, scales and biases come from `quantizer.grid(weight)` through the QAT
  layers' `to_quantized()`: exactly the grid of the last fake-quant forward. Its scales/biases
  are in the quantizer's `scale_dtype` S when the run set one, else in the weight dtype T.
* `cast_model` then casts every float parameter, affine scales/biases included, to the output
  dtype D, because mlx-lm expects scales in the model's dtype, and MLX dequantizes in the
  dtype of the scales (promoted with the activations' in `quantized_matmul`).
* Default D (`default_dtype`): S when the run set `scale_dtype` (its forward dequantized in S,
  T(S(code)·S(s) + S(b)), which is what an S model computes: the weights are exact and only
  the half-precision activations move the loss), else T (a float32 run exports float32:
  exact weights, loss equal to float32 noise).
* Any other D rounds scales and biases once more. Dequantized in D, each weight then moves by
  at most |Δŵ| ≤ 3u·(code·|s| + |b|), u = 2⁻¹¹ (float16) or 2⁻⁸ (bfloat16): one rounding
  each for s, b, the product and the sum (tests/test_convert_grids.py checks the bound). Train
  with `scale_dtype` set to the deploy dtype to avoid it.
* fp formats (mxfp4, nvfp4, mxfp8) store uint8 scales: nothing to cast, always exact.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map_with_path, tree_unflatten

from ..quant.spec import QuantSpec
from .errors import ConvertError

logger = logging.getLogger(__name__)

DTYPES = ("float16", "bfloat16", "float32")


def parse_dtype(name: str | None, default: mx.Dtype | None = None) -> mx.Dtype | None:
    """`--dtype NAME` as an `mx.Dtype` (`default` when not given); ConvertError otherwise."""
    if name is None:
        return default
    if name not in DTYPES:
        raise ConvertError(f"--dtype {name}: choose one of {', '.join(DTYPES)}")
    return getattr(mx, name)


def dtype_name(d: mx.Dtype) -> str:
    return str(d).rsplit(".", 1)[-1]


def format_flags(q_bits, q_group_size, q_mode) -> QuantSpec | None:
    """The format `--bits/--group-size/--mode` ask for (None when none was given)."""
    if q_bits is None and q_group_size is None and q_mode is None:
        return None
    try:
        return QuantSpec.for_mode(q_mode or "affine", q_bits, q_group_size)
    except ValueError as e:
        raise ConvertError(f"--bits/--group-size/--mode: {e}") from e


def check_trained_format(qcfg, requested: QuantSpec | None, where) -> None:
    """Refuse a QAT export to a format other than the one the run was trained for."""
    if requested is None or requested == qcfg.weights:
        return
    raise ConvertError(
        f"checkpoint {where} was trained with QAT for {qcfg.weights} ({qcfg.weights.to_mlx()}), "
        f"but the flags ask for {requested} ({requested.to_mlx()}). Exporting a QAT model to "
        "another format throws the training away: drop --bits/--group-size/--mode, or "
        "pass --ptq to round the float weights to the new format"
    )


def ptq_config(qcfg, requested: QuantSpec | None):
    """Round-to-nearest (min/max) config: the trained layout (per-layer rules, embedding floor,
    `scale_dtype`) at the requested format if any; mlx-lm's defaults (affine 4/64) otherwise."""
    from ..qat_config import QATConfig

    if qcfg is None:
        return QATConfig(weights=requested or QuantSpec(), quantizer="minmax")
    weights = requested or qcfg.weights
    return replace(qcfg, weights=weights, quantizer="minmax", predicate=None)


def float_dtype(model: nn.Module) -> mx.Dtype:
    """The dtype of the model's float weights (the most common one)."""
    counts: dict = {}
    for _, v in tree_flatten(model.parameters()):
        if mx.issubdtype(v.dtype, mx.floating):
            counts[v.dtype] = counts.get(v.dtype, 0) + v.size
    return max(counts, key=counts.get) if counts else mx.float32


def to_float(model: nn.Module, dequantized: bool) -> None:
    """Swap the QAT layers back to float modules, in place; `dequantized`: with the weight each
    layer's forward uses (ŵ when fake quant is on), else its float weight (PTQ starts there)."""
    from mlx_lm.models.switch_layers import SwitchLinear

    from ..layers import QATEmbedding, QATLinear, QATSwitchLinear
    from ..prepare import qat_layers

    new = []
    for path, layer in qat_layers(model):
        w = layer.effective_weight() if dequantized else layer["weight"]
        bias = "bias" in layer
        if isinstance(layer, QATLinear):
            m = nn.Linear(w.shape[1], w.shape[0], bias=bias)
        elif isinstance(layer, QATEmbedding):
            m = nn.Embedding(*w.shape)
        elif isinstance(layer, QATSwitchLinear):
            m = SwitchLinear(w.shape[2], w.shape[1], w.shape[0], bias=bias)
        else:
            raise ConvertError(f"{path}: no float module for {type(layer).__name__}")
        m.weight = w
        if bias:
            m.bias = layer["bias"]
        new.append((path, m))
    if new:
        model.update_modules(tree_unflatten(new))
    mx.eval(model.parameters())


def quantize_model(model: nn.Module, qcfg) -> dict:
    """Swap QAT layers for stock quantized ones (trained grids); return the "quantization" block."""
    from ..prepare import qat_layers, quantize

    for path, layer in qat_layers(model):
        try:
            layer.spec  # noqa: B018 - raises for formats MLX cannot store (e.g. 1-bit sign)
        except ValueError as e:
            raise ConvertError(f"{path}: unsupported export format: {e}") from e
    block = qcfg.to_mlx_quantization(model)
    quantize(model)
    mx.eval(model.parameters())
    return block


def dequantize_stock(model: nn.Module) -> nn.Module:
    """Stock quantized layers → float layers (mlx-lm's `dequantize_model`)."""
    from mlx_lm.utils import dequantize_model

    model = dequantize_model(model)
    mx.eval(model.parameters())
    return model


def default_dtype(train_dtype: mx.Dtype, scale_dtype: mx.Dtype | None) -> mx.Dtype:
    """The export dtype when `--dtype` is not given (see the module docstring)."""
    return scale_dtype if scale_dtype is not None else train_dtype


def cast_model(model: nn.Module, dtype: mx.Dtype, scale_dtype: mx.Dtype | None = None) -> None:
    """Cast float parameters (affine scales/biases included) to `dtype`, as mlx_lm.convert does,
    honouring the model's `cast_predicate`; warn when the run trained in another `scale_dtype`."""
    if scale_dtype is not None and scale_dtype != dtype:
        logger.warning(
            "the run trained with scale_dtype %s, the export is %s: scales/biases are rounded "
            "again and dequantized in %s, so the weights differ from the trained ones by up to "
            "half an ulp; omit --dtype (or pass --dtype %s) for an exact export",
            scale_dtype,
            dtype,
            dtype,
            dtype_name(scale_dtype),
        )
    cast_predicate = getattr(model, "cast_predicate", lambda _: True)

    def cast(k, v):
        if cast_predicate(k) and mx.issubdtype(v.dtype, mx.floating):
            return v.astype(dtype)
        return v

    model.update(tree_map_with_path(cast, model.parameters()))
    mx.eval(model.parameters())


def count_layers(model: nn.Module) -> dict[str, int]:
    """`{format: number of layers}` of the stock quantized modules, plus "float" for the rest."""
    out: dict[str, int] = {}
    for _, m in model.named_modules():
        if "scales" in m and hasattr(m, "bits"):
            key = str(QuantSpec(getattr(m, "mode", "affine"), m.bits, m.group_size))
        elif hasattr(m, "to_quantized") and "weight" in m:
            key = "float"
        else:
            continue
        out[key] = out.get(key, 0) + 1
    return out
