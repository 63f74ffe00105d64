"""The mlx-lm model of a GGUF file: its `quantization` block, the model built from the
tensors, and the comparison with the model mlx-lm loads back from the written directory.

Quantized tensors (Q4_0/Q4_1/Q8_0) become MLX affine layers at group size 32, which hold
ggml's grid exactly: w = d·q + m with q the code, d and m ggml's float16 block scale and
minimum (Q4_0: m = −8d; Q8_0: q + 128 stored, m = −128d; `gguf_read`), widened exactly to
float32 in the built model. Float tensors are float32.
"""

from __future__ import annotations

from collections import Counter

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .errors import ConvertError
from .finite import check_tensors
from .gguf_read import GROUP_SIZE, QTensor, Tensor


def quantization_block(weights: dict[str, Tensor]) -> tuple[dict | None, dict[str, dict]]:
    """mlx-lm's `quantization` block for the kept-quantized weights, and each layer's spec.

    The top level holds the most common bits; layers with other bits get per-path entries.
    """
    specs = {
        k.removesuffix(".weight"): {"group_size": t.group_size, "bits": t.bits, "mode": "affine"}
        for k, t in weights.items()
        if isinstance(t, QTensor)
    }
    if not specs:
        return None, {}
    bits = Counter(s["bits"] for s in specs.values()).most_common(1)[0][0]
    block: dict = {"group_size": GROUP_SIZE, "bits": bits, "mode": "affine"}
    block.update({p: s for p, s in sorted(specs.items()) if s["bits"] != bits})
    return block, specs


def build_model(config: dict, weights: dict[str, Tensor], specs: dict):
    """mlx-lm's llama `Model` holding `weights` in float32: float weights, and quantized layers
    (`specs`) as MLX quantized modules whose scales and biases are ggml's float16 values, widened
    (exactly) so that the model computes ggml's grid."""
    from mlx_lm.models import llama

    model = llama.Model(llama.ModelArgs.from_dict(config))
    if specs:
        nn.quantize(
            model,
            group_size=GROUP_SIZE,
            bits=config["quantization"]["bits"],
            class_predicate=lambda p, m: specs.get(p, False),
        )
    flat: dict[str, mx.array] = {}
    for k, t in weights.items():
        if isinstance(t, QTensor):
            base = k.removesuffix(".weight")
            flat[k] = t.weight
            flat[f"{base}.scales"] = t.scales.astype(mx.float32)
            flat[f"{base}.biases"] = t.biases.astype(mx.float32)
        else:
            flat[k] = t.astype(mx.float32)
    flat = model.sanitize(flat)
    try:
        model.load_weights(list(flat.items()), strict=True)
    except ValueError as e:
        raise ConvertError(f"the GGUF tensors do not fit mlx-lm's llama model: {e}") from e
    mx.eval(model.parameters())
    return model


def _formats(model: nn.Module) -> dict[str, tuple]:
    return {
        p: (m.group_size, m.bits, getattr(m, "mode", "affine"))
        for p, m in model.named_modules()
        if "scales" in m
    }


def compare_loaded(built: nn.Module, loaded: nn.Module) -> dict:
    """Whether `loaded` is `built` exactly: model arguments, quantized formats, every parameter
    (dtype and bits). Returns a summary with the first differences (`"passed"`)."""
    diffs: list[str] = []
    if getattr(built, "args", None) != getattr(loaded, "args", None):
        diffs.append(f"model arguments differ: {loaded.args} != {built.args}")
    if _formats(built) != _formats(loaded):
        diffs.append("quantized formats differ")
    ours, theirs = dict(tree_flatten(built.parameters())), dict(tree_flatten(loaded.parameters()))
    if set(ours) != set(theirs):
        diffs.append(f"parameters differ: {sorted(set(ours) ^ set(theirs))[:5]}")
    for k in sorted(set(ours) & set(theirs)):
        a, b = ours[k], theirs[k]
        if a.dtype != b.dtype or a.shape != b.shape or not mx.array_equal(a, b).item():
            diffs.append(f"{k}: {b.dtype}{tuple(b.shape)} != {a.dtype}{tuple(a.shape)} or values")
    return {"parameters": len(ours), "differences": diffs[:5], "passed": not diffs}


def check_gguf_tensors(header, tensors: dict[str, Tensor]) -> None:
    """Refuse a file with a NaN or inf weight (a quantized tensor after dequantization, in
    float32), naming the tensor and its ggml type, before anything is built or written."""
    named = (
        (f"{n} [{header.types.get(n, '?')}]", t.dequantize() if isinstance(t, QTensor) else t)
        for n, t in tensors.items()
    )
    check_tensors(
        named,
        f"GGUF file {header.path}",
        "the file is damaged (an interrupted download or a disk error): download it again and "
        "compare its sha256 with the publisher's",
    )
