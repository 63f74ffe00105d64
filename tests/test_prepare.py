"""Model surgery: mixed precision, mlx-lm's loader, checkpoints, skip reports."""

from __future__ import annotations

import json
import logging

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import pytest
import test_convert_fixtures as fx
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.models.switch_layers import QuantizedSwitchLinear
from mlx_lm.utils import load_model
from tiny_models import tiny_model as tiny

from mlx_qat.convert import convert
from mlx_qat.layers import QATEmbedding, QATLayer, QATLinear
from mlx_qat.models.presets import model_config_dict
from mlx_qat.prepare import (
    init_quantizers,
    prepare,
    prepare_report,
    qat_layers,
    quantize,
    set_fake_quant,
)
from mlx_qat.qat_config import QATConfig, quantization_map
from mlx_qat.quant.spec import QuantSpec

RTOL = 1e-5


def tokens(shape=(2, 12), seed: int = 1) -> mx.array:
    return mx.random.randint(0, 256, shape, key=mx.random.key(seed))


def rel_err(a: mx.array, b: mx.array) -> float:
    return (mx.abs(a - b).max() / mx.abs(b).max()).item()


def perturb_quantizers(model: nn.Module) -> None:
    """Move learnable quantizer params off their init, as training would."""
    for _, layer in qat_layers(model):
        for name, p in tree_flatten(layer.quantizer.trainable_parameters()):
            noise = 1 + 0.05 * mx.random.uniform(shape=p.shape, key=mx.random.key(p.size))
            layer.quantizer.update({name: p * noise})


def off_init(layer) -> bool:
    """True when `layer`'s quantizer holds other values than `init_from` its weights gives."""
    q = layer.quantizer
    trained = tree_flatten(q.parameters())
    q.init_from(layer["weight"])
    fresh = dict(tree_flatten(q.parameters()))
    q.update(tree_unflatten(trained))
    return any(not mx.array_equal(v, fresh[k]) for k, v in trained)


def model_config(arch: str) -> dict:
    """The mlx-lm config.json of `tiny_models.tiny_model(arch)`, at the fixture data's vocab."""
    model = tiny(arch.removesuffix("-tied"), tie=arch.endswith("-tied"), vocab=fx.VOCAB)
    # llama's ModelArgs leave it None, which transformers' config check (convert loads the
    # exported tokenizer with it) refuses.
    return {**model_config_dict(model), "max_position_embeddings": 512}


MIXED = {
    "llama-minmax": (
        "llama",
        QATConfig(
            weights=QuantSpec(bits=4, group_size=64),
            embeddings=QuantSpec(bits=8, group_size=64),
            overrides={
                "model.layers.0.mlp.down_proj": None,  # left in float
                "model.layers.1.self_attn.o_proj": {"mode": "mxfp4"},
                "model.layers.*.self_attn.[kv]_proj": 2,
            },
        ),
    ),
    "moe-learned_affine": (
        "qwen3_moe",
        QATConfig(
            weights=QuantSpec(bits=3, group_size=32),
            embeddings_min_bits=4,
            quantizer="learned_affine",
            overrides={"model.layers.1.self_attn.q_proj": False},
        ),
    ),
    "moe-lsq": ("qwen3_moe", QATConfig.with_bits(2, group_size=64, quantizer="lsq")),
    "llama-tied-lsq-group": (
        "llama-tied",
        QATConfig(weights=QuantSpec(bits=3, group_size=32), quantizer="lsq", lsq_per="group"),
    ),
}


@pytest.mark.parametrize("case", MIXED)
def test_mixed_precision_loads_in_mlx_lm(case, tmp_path, runs):
    """A mixed-precision QAT run of the trainer, exported by `convert`, loads in mlx-lm as
    the model training left."""
    arch, config = MIXED[case]
    run = runs.make(tmp_path / "run", qat=config, model_config=model_config(arch))
    model = run.model
    # Training moved the learnable quantizers: a fresh init would be another grid.
    assert any(off_init(layer) for _, layer in qat_layers(model)) is (config.quantizer != "minmax")
    x = tokens()
    fake = model(x)
    expected = {p: layer.spec for p, layer in qat_layers(model)}

    out = tmp_path / "out"
    result = convert(run.path, out)
    assert result.method == "qat" and result.parity["passed"]
    quantization = json.loads((out / "config.json").read_text())["quantization"]
    assert quantization == config.to_mlx_quantization(model)
    skipped = [p for p, v in quantization.items() if v is False]
    assert skipped == [p for p, s in quantization_map(model).items() if s is None]

    loaded, _ = load_model(out)  # mlx-lm's own per-path quantization code path
    assert rel_err(fake, loaded(x)) <= RTOL
    mods = dict(loaded.named_modules())
    for path, spec in expected.items():
        m = mods[path]
        assert (m.mode, m.bits, m.group_size) == (spec.mode, spec.bits, spec.group_size), path
    for path in skipped:
        assert type(mods[path]) in (nn.Linear, nn.Embedding), path
    assert ("lm_head" in mods) != arch.endswith("-tied")  # tied: embed_tokens.as_linear


def test_mixed_precision_module_types_and_bits():
    arch, config = MIXED["llama-minmax"]
    model = tiny(arch)
    prepare(model, config)
    q = config.to_mlx_quantization(model)
    assert q["model.layers.0.mlp.down_proj"] is False
    assert (
        q["lm_head"] == q["model.embed_tokens"] == {"group_size": 64, "bits": 8, "mode": "affine"}
    )
    assert q["model.layers.1.self_attn.o_proj"] == {"group_size": 32, "bits": 4, "mode": "mxfp4"}
    assert q["model.layers.0.self_attn.k_proj"]["bits"] == 2
    assert "model.layers.0.self_attn.q_proj" not in q  # same as the global entry
    quantize(model)
    layers = model.model.layers
    assert type(layers[0].mlp.down_proj) is nn.Linear
    assert isinstance(model.lm_head, nn.QuantizedLinear) and model.lm_head.bits == 8
    assert isinstance(model.model.embed_tokens, nn.QuantizedEmbedding)
    assert layers[1].self_attn.o_proj.mode == "mxfp4"
    assert layers[0].self_attn.v_proj.bits == 2 and layers[0].self_attn.q_proj.bits == 4
    # mlx-lm's reading of the block after quantize() is the same
    assert config.to_mlx_quantization(model) == q


@pytest.mark.parametrize("kind", ["minmax", "lsq", "learned_affine"])
def test_scale_dtype_export_is_exact(kind, caplog):
    """Scales rounded to float16 in the forward are exactly the exported scales.

    (MLX's quantized_matmul with float16 scales and float32 activations computes at about
    float16 precision, so logits are compared at the weight level here.)
    """
    model = tiny("qwen3_moe")
    with caplog.at_level(logging.WARNING, logger="mlx_qat.prepare"):
        prepare(model, QATConfig(quantizer=kind, scale_dtype="float16"))
    assert "scale_dtype=float16" in caplog.text
    perturb_quantizers(model)
    layers = dict(qat_layers(model))
    fake = {p: layer.effective_weight() for p, layer in layers.items()}
    quantize(model)
    mods = dict(model.named_modules())
    for path, w_hat in fake.items():
        q = mods[path]
        assert q.scales.dtype == mx.float16, path
        args = dict(group_size=q.group_size, bits=q.bits, mode=q.mode, dtype=mx.float32)
        assert mx.array_equal(mx.dequantize(q.weight, q.scales, q.biases, **args), w_hat), path


def test_moe_switch_layers_export():
    model = tiny("qwen3_moe")
    prepare(model, QATConfig())
    quantize(model)
    sw = model.model.layers[0].mlp.switch_mlp
    assert all(isinstance(m, QuantizedSwitchLinear) for m in (sw.gate_proj, sw.up_proj))


@pytest.mark.parametrize("kind", ["lsq", "learned_affine"])
def test_checkpoint_round_trip_keeps_quantizer_state(kind, tmp_path):
    config = QATConfig(weights=QuantSpec(bits=2, group_size=32), quantizer=kind)
    model = tiny("qwen3_moe")
    prepare(model, config)
    # One optimizer step so weights and quantizer params differ from any fresh init.
    opt = optim.Adam(learning_rate=1e-2)
    x = tokens((2, 16))

    def loss_fn(m):
        return nn.losses.cross_entropy(m(x[:, :-1]), x[:, 1:], reduction="mean")

    _, grads = nn.value_and_grad(model, loss_fn)(model)
    opt.update(model, grads)
    mx.eval(model.parameters())
    out = model(x)

    weights = dict(tree_flatten(model.parameters()))
    assert any(
        k.endswith(".quantizer.alpha" if kind == "lsq" else ".quantizer.scale") for k in weights
    )
    assert (
        "model.layers.0.self_attn.q_proj.quantizer." + ("alpha" if kind == "lsq" else "bias")
        in weights
    )
    mx.save_safetensors(str(tmp_path / "ckpt.safetensors"), weights)

    fresh = tiny("qwen3_moe", seed=123)
    prepare(fresh, config)
    assert not mx.array_equal(fresh(x), out)
    fresh.load_weights(str(tmp_path / "ckpt.safetensors"))  # strict: every key matches
    assert mx.array_equal(fresh(x), out)


def test_init_quantizers_follows_weights():
    model = tiny()
    prepare(model, QATConfig(quantizer="lsq"), enabled=False)
    layer = model.model.layers[0].mlp.up_proj
    before = layer.quantizer.alpha
    layer.weight = 3 * layer.weight
    assert init_quantizers(model) == len(list(qat_layers(model)))
    assert mx.allclose(layer.quantizer.alpha, 3 * before, rtol=1e-5)


def test_prepare_enabled_false_then_switch():
    model = tiny()
    x = tokens()
    ref = model(x)
    prepare(model, QATConfig(), enabled=False)
    assert all(not layer.fake_quant for _, layer in qat_layers(model))
    assert mx.array_equal(model(x), ref)
    assert set_fake_quant(model, True) == 2 * 7 + 2  # per block 7, embed, head
    assert not mx.array_equal(model(x), ref)


class Odd(nn.Module):
    """Layers prepare cannot quantize: an in-dim of 100 and a convolution."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(64, 64)
        self.up = nn.Linear(64, 100)
        self.down = nn.Linear(100, 64)  # in-dim 100: no group size divides it
        self.conv = nn.Conv1d(64, 64, 3)
        self.head = nn.Linear(64, 64)

    def __call__(self, x):
        h = self.embed(x)
        h = self.down(nn.gelu(self.up(h)))
        return self.head(self.conv(h))


def test_skipped_layers_are_reported(caplog):
    model = Odd()
    x = mx.array([[1, 2, 3, 4, 5]])
    with caplog.at_level(logging.INFO, logger="mlx_qat.prepare"):
        prepare(model, QATConfig(overrides={"head": None}))
    report = prepare_report(model, QATConfig(overrides={"head": None}))
    reasons = {d.path: d.reason for d in report.skipped}
    assert reasons == {
        "down": "last dim 100 not a multiple of group_size 64 (affine4g64)",
        "conv": "unsupported module type Conv1d",
        "head": "excluded by override 'head'",
    }
    assert {d.path for d in report.quantized} == {"embed", "up"}
    assert isinstance(model.up, QATLinear) and isinstance(model.embed, QATEmbedding)
    assert type(model.down) is nn.Linear
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "down" in warned and "Conv1d" in warned and "head" not in warned
    assert "2 layers quantized" in caplog.text
    model(x)  # still runs
    assert QATConfig().to_mlx_quantization(model)["down"] is False


def test_prepare_twice_is_a_no_op():
    model = tiny()
    prepare(model, QATConfig())
    layers = dict(qat_layers(model))
    prepare(model, QATConfig(weights=QuantSpec(bits=8)))
    assert dict(qat_layers(model)) == layers
    assert all(isinstance(m, QATLayer) for m in layers.values())


def test_quantize_without_qat_layers_warns(caplog):
    model = tiny()
    with caplog.at_level(logging.WARNING, logger="mlx_qat.prepare"):
        assert quantize(model) is model
    assert "no QAT layers" in caplog.text
