"""QATConfig: rule resolution, mlx-lm dict semantics, serialization, validation."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest
import yaml
from tiny_models import tiny_model

from mlx_qat.qat_config import QATConfig, spec_from_rule
from mlx_qat.quant.spec import QuantSpec

LIN = nn.Linear(64, 64)
EMB = nn.Embedding(16, 64)


def test_defaults_and_embedding_spec():
    cfg = QATConfig()
    assert cfg.weights == QuantSpec("affine", 4, 64) and cfg.embedding_spec == cfg.weights
    assert cfg.resolve("model.embed_tokens", EMB) == (cfg.weights, "default")
    two = QATConfig.with_bits(2)
    assert two.weights.bits == 2 and two.embedding_spec == QuantSpec("affine", 4, 64)
    assert two.resolve("lm_head", LIN)[0].bits == 4  # heads follow embeddings
    assert two.resolve("model.layers.0.mlp.up_proj", LIN)[0].bits == 2
    assert QATConfig.with_bits(8).embedding_spec.bits == 8
    fp = QATConfig(weights=QuantSpec.for_mode("nvfp4"), embeddings_min_bits=8)
    assert fp.embedding_spec == QuantSpec("affine", 8, 32)
    explicit = QATConfig(embeddings=QuantSpec(bits=8), embeddings_min_bits=4)
    assert explicit.embedding_spec.bits == 8


def test_override_precedence():
    cfg = QATConfig(
        overrides={
            "model.layers.*": {"bits": 8},
            "model.layers.0.*": None,
            "model.layers.0.mlp.up_proj": 2,  # exact path beats every glob
        }
    )
    assert cfg.resolve("model.layers.0.mlp.up_proj", LIN) == (
        QuantSpec(bits=2),
        "override 'model.layers.0.mlp.up_proj'",
    )
    # globs: first in insertion order wins
    assert cfg.resolve("model.layers.0.mlp.down_proj", LIN)[0] == QuantSpec(bits=8)
    assert cfg.resolve("lm_head", LIN) == (QuantSpec(), "default")
    off = QATConfig(overrides={"lm_head": False, "model.*": True})
    assert off.resolve("lm_head", LIN) == (None, "excluded by override 'lm_head'")
    assert off.resolve("model.embed_tokens", EMB)[0] == off.embedding_spec


def test_dicts_follow_mlx_lm_semantics():
    # missing mode -> affine, missing bits/group size -> that mode's defaults (to_quantized)
    assert spec_from_rule({"bits": 8}) == QuantSpec("affine", 8, 64)
    assert spec_from_rule({"mode": "mxfp4"}) == QuantSpec("mxfp4", 4, 32)
    assert spec_from_rule({"group_size": 32, "bits": 3, "mode": "affine"}) == QuantSpec(
        "affine", 3, 32
    )
    assert spec_from_rule({"bits": 4, "quantize_input": False}) == QuantSpec()
    with pytest.raises(ValueError, match="global_scale"):
        spec_from_rule({"bits": 4, "global_scale": True})
    with pytest.raises(ValueError, match="bits 2, 3, 4, 5, 6, 8"):
        QATConfig(overrides={"x": {"bits": 7}})


def test_predicates():
    def pred(path, module):
        if path.endswith("mlp.gate"):
            return {"group_size": 64, "bits": 8}
        return not path.startswith("model.layers.1.")

    cfg = QATConfig(predicate=pred, overrides={"model.layers.1.mlp.up_proj": 3})
    assert cfg.resolve("model.layers.0.mlp.gate", LIN) == (QuantSpec(bits=8), "predicate")
    assert cfg.resolve("model.layers.1.self_attn.q_proj", LIN) == (None, "excluded by predicate")
    assert cfg.resolve("model.layers.1.mlp.up_proj", LIN)[0] == QuantSpec(bits=3)
    assert cfg.resolve("model.embed_tokens", EMB)[0] == cfg.embedding_spec


def test_model_quant_predicate():
    model = tiny_model("qwen3_moe")
    gate = model.model.layers[0].mlp.gate
    cfg = QATConfig(weights=QuantSpec(bits=2))
    assert cfg.resolve("model.layers.0.mlp.gate", gate, model) == (
        QuantSpec(bits=8),
        "the model's quant_predicate",
    )
    assert cfg.resolve("model.layers.0.self_attn.q_proj", LIN, model)[0].bits == 2
    no = QATConfig(weights=QuantSpec(bits=2), use_model_predicate=False)
    assert no.resolve("model.layers.0.mlp.gate", gate, model)[0].bits == 2


def test_yaml_round_trip():
    cfg = QATConfig(
        weights=QuantSpec(bits=3, group_size=32),
        embeddings=QuantSpec.for_mode("mxfp8"),
        quantizer="minmax",
        scale_dtype="bfloat16",
        overrides={"lm_head": 8, "model.layers.0.*": None, "x": {"mode": "nvfp4"}, "y": True},
        head_names=("lm_head", "output"),
    )
    d = cfg.to_dict()
    text = yaml.safe_dump(d)
    back = QATConfig.from_dict(yaml.safe_load(text))
    assert back == cfg
    assert back.to_dict() == d
    assert back.mx_scale_dtype == mx.bfloat16
    assert QATConfig.from_dict(QATConfig().to_dict()) == QATConfig()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(quantizer="lsq", weights=QuantSpec.for_mode("mxfp4")), "learns affine grids"),
        (dict(quantizer="lsq", overrides={"a": {"mode": "nvfp4"}}), "learns affine grids"),
        (dict(quantizer="gptq"), "minmax, lsq, learned_affine"),
        (dict(lsq_per="col"), "'row' or 'group'"),
        (dict(scale_dtype="float12"), "MLX float dtype"),
        (dict(embeddings_min_bits=7), "embeddings_min_bits=7"),
    ],
)
def test_invalid_configs_name_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        QATConfig(**kwargs)


def test_unserializable_and_unknown_keys():
    with pytest.raises(ValueError, match="express it as `overrides`"):
        QATConfig(predicate=lambda p, m: True).to_dict()
    with pytest.raises(ValueError, match="unknown keys \\['bits'\\]"):
        QATConfig.from_dict({"bits": 4})
