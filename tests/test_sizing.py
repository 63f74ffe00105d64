"""mlx_qat.models.sizing: exported bytes equal the quantized model's; planner byte counts."""

from __future__ import annotations

import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten
from tiny_models import tiny_model as tiny

from mlx_qat.models.sizing import parameter_bytes, size_report
from mlx_qat.prepare import prepare, quantize
from mlx_qat.qat_config import QATConfig
from mlx_qat.quant.spec import QuantSpec


def nbytes(model: nn.Module) -> int:
    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


CONFIGS = {
    "4bit": QATConfig(),
    "mixed": QATConfig(
        weights=QuantSpec(bits=3, group_size=32),
        embeddings=QuantSpec(bits=8),
        overrides={"model.layers.0.mlp.*": None, "model.layers.1.self_attn.*": {"mode": "mxfp4"}},
    ),
    "f16-scales": QATConfig(weights=QuantSpec(bits=2), scale_dtype="float16"),
    "lsq": QATConfig(weights=QuantSpec(bits=4, group_size=32), quantizer="lsq"),
}


@pytest.mark.parametrize("arch", ["llama", "qwen3_moe"])
@pytest.mark.parametrize("name", CONFIGS)
def test_size_report_matches_quantized_model(arch, name):
    config = CONFIGS[name]
    model = tiny(arch)
    planned = size_report(model, config)  # before prepare: what it will be
    prepare(model, config)
    prepared = size_report(model)
    quantize(model)
    real = size_report(model)
    assert planned.total_bytes == prepared.total_bytes == real.total_bytes == nbytes(model)
    mods = dict(model.named_modules())
    for layer in real.layers:  # per layer too
        assert layer.bytes == nbytes(mods[layer.path]), layer.path
    assert [(s.path, s.spec, s.bytes) for s in planned.layers] == [
        (s.path, s.spec, s.bytes) for s in real.layers
    ]
    assert planned.total_params == prepared.total_params == real.total_params


def test_parameter_bytes_by_hand():
    model = tiny("llama")
    float_params = dict(tree_flatten(model.parameters()))
    n = sum(v.size for v in float_params.values())
    embed = float_params["model.embed_tokens.weight"].size + float_params["lm_head.weight"].size
    quantized = sum(v.size for k, v in float_params.items() if v.ndim == 2)
    others = n - quantized  # norms: float32

    config = QATConfig.with_bits(2)  # body 2 bit, embedding + head 4 bit
    pb = parameter_bytes(model, config)
    assert (pb.n_params, pb.n_params_no_embed) == (n, n - embed)
    expected = 2 * (quantized - embed) / 8 + 4 * embed / 8 + 4 * others
    assert pb.bytes == expected
    prepare(model, config)
    assert parameter_bytes(model) == pb  # quantizer state is not counted
    quantize(model)
    assert parameter_bytes(model) == pb
    assert pb.bits_per_param == pytest.approx(8 * expected / n)


def test_parameter_bytes_tied_and_excluded():
    model = tiny("llama", tie=True)
    float_params = dict(tree_flatten(model.parameters()))
    n = sum(v.size for v in float_params.values())
    down = float_params["model.layers.0.mlp.down_proj.weight"].size
    config = QATConfig(overrides={"model.layers.0.mlp.down_proj": None})
    pb = parameter_bytes(model, config)
    assert pb.n_params_no_embed == n - float_params["model.embed_tokens.weight"].size
    quantized = sum(v.size for v in float_params.values() if v.ndim == 2) - down
    assert pb.bytes == 4 * quantized / 8 + 4 * (n - quantized)


def test_report_text():
    model = tiny("llama")
    prepare(model, QATConfig())
    text = str(size_report(model))
    assert "model.layers.0.self_attn.q_proj" in text and "affine4g64" in text
    assert text.splitlines()[-1].startswith("total")
