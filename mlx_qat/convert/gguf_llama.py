"""A llama-architecture GGUF → mlx-lm's `llama` model: config.json, weight names, q/k rows, the
model built from the tensors and its comparison with the one mlx-lm loads back.

* Config (`llama_config`): the `llama.*` metadata under mlx-lm's names, floats as the shortest
  decimal of the same float32 (9.999999747378752e-06 → 1e-05), each value checked where it is
  read (a bad one is a one-line `ConvertError` naming the key); names: `mlx_name`.
* Rotary layout (`unpermute_rows`): llama.cpp's `convert_hf_to_gguf.py` reorders the rows of
  q_proj (with n_head) and k_proj (with n_head_kv) of each head from the Hugging Face "rotate
  half" layout, where head row j·D/2 + i pairs with row i, into ggml's interleaved one (rows 2i,
  2i+1): `W.reshape(n, 2, D/2, ...).swapaxes(1, 2)`. mlx-lm's llama uses the Hugging Face
  layout (`rope_traditional: false`), so the import applies the inverse row order. Rows are
  output channels, so a quantized weight's codes, scales and biases move together, exactly.
* Model (`build_model`): quantized tensors (Q4_0/Q4_1/Q8_0) become MLX affine layers at group
  size 32, which hold ggml's grid exactly: w = d·q + m with q the code, d and m ggml's float16
  block scale and minimum (Q4_0: m = −8d; Q8_0: q + 128 stored, m = −128d; `gguf_read`),
  widened exactly to float32 in the built model. Float tensors are float32.
"""

from __future__ import annotations

import math
import numbers
import re
from collections import Counter
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from .errors import ConvertError, check_tensors
from .gguf_read import GROUP_SIZE, GGUFHeader, QTensor, Tensor

ARCH = "llama"
LAYER_PARTS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
TOP_PARTS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
SUFFIXES = ("weight", "bias")
_LAYER = re.compile(r"blk\.(\d+)\.(\w+)\.(\w+)")
FIX = "convert the original Hugging Face model with mlx_lm.convert instead"


def _bad(path, key: str, value, want: str) -> ConvertError:
    return ConvertError(
        f"{path}: GGUF metadata {key} = {value!r}, but it must be {want}; the file is damaged "
        f"or was written wrong (download it again), or {FIX}"
    )


def _int(meta: dict, key: str, path, default: int | None = None, low: int = 1) -> int:
    if key not in meta:
        if default is not None:
            return default
        raise ConvertError(f"{path}: GGUF metadata has no {key}, which a llama model needs")
    value = meta[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise _bad(path, key, value, f"an integer >= {low}")
    return int(value)


def _positive(meta: dict, key: str, path, default: float | None = None) -> float:
    if key not in meta and default is None:
        raise ConvertError(f"{path}: GGUF metadata has no {key}, which a llama model needs")
    value = meta.get(key, default)
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and value > 0):
        raise _bad(path, key, value, "a finite number > 0")
    return float(str(np.float32(value)))  # the shortest decimal of the same float32


def check_architecture(header: GGUFHeader) -> None:
    """Refuse a file whose `general.architecture` is not llama (naming it and the fix)."""
    arch = header.metadata.get("general.architecture")
    if arch != ARCH:
        raise ConvertError(
            f"{header.path}: GGUF architecture {arch!r} is not supported; mlx_qat imports "
            f"llama-architecture GGUF files (Llama, Mistral, SmolLM, ...). For {arch!r}, {FIX}"
        )


def llama_config(header: GGUFHeader) -> dict[str, Any]:
    """mlx-lm's config.json for the file (see the module docstring); refuses what mlx-lm's llama
    cannot express (partial rotary, rope_freqs tables, rope scaling other than linear)."""
    m, p = header.metadata, header.path
    heads = _int(m, "llama.attention.head_count", p)
    hidden = _int(m, "llama.embedding_length", p)
    kv_heads = _int(m, "llama.attention.head_count_kv", p, default=heads)
    if heads % kv_heads:
        raise _bad(p, "llama.attention.head_count_kv", kv_heads, f"a divisor of head_count {heads}")
    if "llama.attention.key_length" not in m and hidden % heads:
        raise _bad(p, "llama.embedding_length", hidden, f"a multiple of head_count {heads}")
    head_dim = _int(m, "llama.attention.key_length", p, default=hidden // heads)
    if head_dim % 2:
        raise _bad(p, "llama.attention.key_length", head_dim, "even (rotary pairs)")
    if _int(m, "llama.attention.value_length", p, default=head_dim) != head_dim:
        raise ConvertError(f"{p}: key_length != value_length is not a llama model mlx-lm runs")
    rot = _int(m, "llama.rope.dimension_count", p, default=head_dim)
    if rot != head_dim:
        raise ConvertError(
            f"{p}: llama.rope.dimension_count {rot} != head_dim {head_dim} (partial rotary), "
            f"which mlx-lm's llama does not implement; {FIX}"
        )
    if "rope_freqs.weight" in header.types:
        raise ConvertError(
            f"{p}: the file carries rope_freqs.weight (Llama 3.1-style frequency scaling), whose "
            f"parameters GGUF does not keep; {FIX}"
        )
    embd = header.shapes.get("token_embd.weight")
    if embd is None:
        raise ConvertError(f"{p}: no token_embd.weight tensor; not a llama model file")
    cfg: dict[str, Any] = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_act": "silu",
        "hidden_size": hidden,
        "num_hidden_layers": _int(m, "llama.block_count", p),
        "intermediate_size": _int(m, "llama.feed_forward_length", p),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": _positive(m, "llama.attention.layer_norm_rms_epsilon", p, 1e-5),
        "rope_theta": _positive(m, "llama.rope.freq_base", p, 10000.0),
        "vocab_size": int(embd[0]),
        "tie_word_embeddings": "output.weight" not in header.types,
        "attention_bias": "blk.0.attn_q.bias" in header.types,
        "mlp_bias": "blk.0.ffn_up.bias" in header.types,
    }
    if "llama.context_length" in m:
        cfg["max_position_embeddings"] = _int(m, "llama.context_length", p)
    scaling = m.get("llama.rope.scaling.type", "none")
    if scaling == "linear":
        factor = _positive(m, "llama.rope.scaling.factor", p)
        cfg["rope_scaling"] = {"type": "linear", "factor": factor}
    elif scaling != "none":
        raise ConvertError(f"{p}: rope scaling {scaling!r} is not supported (linear is); {FIX}")
    n_vocab = _int(m, "llama.vocab_size", p, default=cfg["vocab_size"])
    if n_vocab != cfg["vocab_size"]:
        raise ConvertError(
            f"{p}: llama.vocab_size {n_vocab} != token_embd rows {cfg['vocab_size']}; the file "
            "is inconsistent"
        )
    for key, tok in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id")):
        if f"tokenizer.ggml.{tok}" in m:
            cfg[key] = _int(m, f"tokenizer.ggml.{tok}", p, low=0)
            if cfg[key] >= cfg["vocab_size"]:
                raise _bad(
                    p, f"tokenizer.ggml.{tok}", cfg[key], f"< vocab_size {cfg['vocab_size']}"
                )
    return cfg


def mlx_name(name: str, path=None) -> str:
    """mlx-lm's parameter path for a GGUF tensor name (ConvertError for one it has no place for)."""
    match = _LAYER.fullmatch(name)
    if match and match[2] in LAYER_PARTS and match[3] in SUFFIXES:
        return f"model.layers.{match[1]}.{LAYER_PARTS[match[2]]}.{match[3]}"
    base, _, suffix = name.rpartition(".")
    if base in TOP_PARTS and suffix in SUFFIXES:
        return f"{TOP_PARTS[base]}.{suffix}"
    raise ConvertError(
        f"{path}: tensor {name} has no place in mlx-lm's llama model (known: token_embd, "
        f"output_norm, output, blk.N.{{{','.join(LAYER_PARTS)}}}); {FIX}"
    )


def unpermute_rows(t: Tensor, n_head: int) -> Tensor:
    """Undo llama.cpp's q/k row order for rotary (see the module docstring): HF row h·D + j·D/2
    + i is GGUF row h·D + 2i + j."""
    rows = t.shape[0]
    if rows % (2 * n_head):
        raise ConvertError(f"q/k rows {rows} are not a multiple of 2 x {n_head} heads")
    index = mx.array(np.arange(rows).reshape(n_head, rows // n_head // 2, 2).transpose(0, 2, 1))
    index = index.reshape(-1)
    return t.take_rows(index) if isinstance(t, QTensor) else t[index]


def to_mlx_weights(header: GGUFHeader, tensors: dict[str, Tensor], config: dict) -> dict:
    """The GGUF tensors under mlx-lm's names, q/k rows in the Hugging Face rotary layout."""
    out: dict[str, Tensor] = {}
    n_q, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    for name, t in tensors.items():
        key = mlx_name(name, header.path)
        if ".self_attn.q_proj." in key:
            t = unpermute_rows(t, n_q)
        elif ".self_attn.k_proj." in key:
            t = unpermute_rows(t, n_kv)
        out[key] = t
    return out


def quantization_block(weights: dict[str, Tensor]) -> tuple[dict | None, dict[str, dict]]:
    """mlx-lm's `quantization` block for the kept-quantized weights (the most common bits, and
    per-path entries for layers with other bits), and each layer's spec."""
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
    """mlx-lm's llama `Model` holding `weights` in float32, quantized layers (`specs`) with
    ggml's scales and biases widened exactly (see the module docstring)."""
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
    """Refuse a NaN or inf weight (a quantized one dequantized), naming it and its ggml type."""
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
