"""A family of small Llama models with one dial (the depth), and model building from configs.

`d<depth>` (depth even, >= 2) is an `mlx_lm.models.llama` model with tied embeddings and

    hidden        = 32 · depth                       (a multiple of 64: every group size 32/64
                                                      divides it; 128 needs depth % 4 == 0)
    heads         = hidden / 64                      (head_dim 64), as many KV heads
    intermediate  = 8/3 · hidden rounded up to 128   (SwiGLU; every group size divides it)
    layers        = depth

so width and depth grow together (aspect ratio 32, deeper and narrower than nanochat's 64,
which suits tiny models). Parameters without embeddings ≈ 12·depth·hidden² ≈ 12,300·depth³.

| preset | hidden | heads | mlp  | N without embeddings |
|--------|--------|-------|------|----------------------|
| d2     | 64     | 1     | 256  | 0.13 M               |
| d4     | 128    | 2     | 384  | 0.85 M               |
| d6     | 192    | 3     | 512  | 2.7 M                |
| d8     | 256    | 4     | 768  | 6.8 M                |
| d12    | 384    | 6     | 1024 | 21 M                 |
| d16    | 512    | 8     | 1408 | 51 M                 |
| d24    | 768    | 12    | 2048 | 170 M                |
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, is_dataclass

import mlx.nn as nn

PRESET_RE = re.compile(r"^d(\d+)$")


def preset_config(name: str, vocab_size: int, max_position_embeddings: int = 4096) -> dict:
    """The mlx-lm `config.json` dict of preset `name` ("d<depth>")."""
    m = PRESET_RE.match(str(name))
    if not m or int(m.group(1)) < 2 or int(m.group(1)) % 2:
        raise ValueError(
            f"preset {name!r}: use d<depth> with an even depth >= 2, e.g. d2, d4, d8, d12"
        )
    if vocab_size < 1:
        raise ValueError(f"preset {name!r}: vocab_size must be >= 1, got {vocab_size}")
    depth = int(m.group(1))
    hidden, intermediate = _widths(depth)
    return {
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": depth,
        "intermediate_size": intermediate,
        "num_attention_heads": hidden // 64,
        "num_key_value_heads": hidden // 64,
        "rms_norm_eps": 1e-5,
        "vocab_size": int(vocab_size),
        "max_position_embeddings": int(max_position_embeddings),
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
    }


def _widths(depth: int) -> tuple[int, int]:
    hidden = 32 * depth
    return hidden, 128 * math.ceil(8 * hidden / 3 / 128)


def preset_for_params(n_params_no_embed: float) -> str:
    """The preset whose size without embeddings is closest (in log) to `n_params_no_embed`."""
    best, best_err = "d2", math.inf
    for depth in range(2, 65, 2):
        hidden, inter = _widths(depth)
        n = depth * (4 * hidden * hidden + 3 * hidden * inter + 2 * hidden)
        err = abs(math.log(n / n_params_no_embed))
        if err < best_err:
            best, best_err = f"d{depth}", err
    return best


def model_from_config(config: dict) -> nn.Module:
    """The mlx-lm model (any architecture mlx-lm supports) a `config.json` dict describes,
    with random, lazy init."""
    from ..mlxlm_compat import model_classes

    if "model_type" not in config:
        raise ValueError("model config: no 'model_type'; give an mlx-lm config.json")
    try:
        model_class, args_class = model_classes(config)
    except ValueError as e:
        raise ValueError(f"model config: {e} (model_type={config['model_type']!r})") from e
    return model_class(args_class.from_dict(config))


def model_config_dict(model: nn.Module, base: dict | None = None) -> dict:
    """`{"model_type", <ModelArgs fields>}` for config.json, from the model's `args`."""
    args = getattr(model, "args", None)
    out = dict(base or {})
    if args is not None and is_dataclass(args):
        # A None the caller did not write is a ModelArgs default: leave it out (config.json
        # readers such as transformers refuse e.g. `max_position_embeddings: null`).
        out.update(
            {k: v for k, v in asdict(args).items() if _jsonable(v) and (v is not None or k in out)}
        )
    if "model_type" not in out:
        out["model_type"] = getattr(model, "model_type", None) or args.model_type
    return out


def _jsonable(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str, list, tuple, dict))
