"""QAT layers: fake quant = stock quantized modules, fake quant off = float, gradients."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models.switch_layers import QuantizedSwitchLinear, SwitchLinear
from tiny_models import tiny_model, tokens

from mlx_qat.layers import QATEmbedding, QATLinear, QATSwitchLinear
from mlx_qat.prepare import prepare, qat_layers, quantize, set_fake_quant
from mlx_qat.qat_config import QATConfig
from mlx_qat.quant.spec import QuantSpec

RTOL = 1e-5  # quantized_matmul vs dequantize-then-matmul: float rounding only


def rel_err(a: mx.array, b: mx.array) -> float:
    return (mx.abs(a - b).max() / mx.abs(b).max()).item()


ARCHS = ["llama", "qwen3", "gemma3_text", "qwen3_moe"]
SPECS = [
    QuantSpec("affine", 2, 64),
    QuantSpec("affine", 3, 32),
    QuantSpec("affine", 4, 64),
    QuantSpec("affine", 6, 64),
    QuantSpec("affine", 8, 32),
    QuantSpec.for_mode("mxfp4"),
    QuantSpec.for_mode("nvfp4"),
    QuantSpec.for_mode("mxfp8"),
]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_fake_quant_equals_quantized_model(arch, spec):
    model = tiny_model(arch)
    x = tokens()
    float_logits = model(x)
    prepare(model, QATConfig(weights=spec, use_model_predicate=False))
    assert len(list(qat_layers(model))) > 0
    fake = model(x)
    set_fake_quant(model, False)
    assert mx.array_equal(model(x), float_logits)  # FP phase: the float model, bit for bit
    set_fake_quant(model, True)
    quantize(model)
    assert not list(qat_layers(model))
    real = model(x)
    assert rel_err(fake, real) <= RTOL, (arch, str(spec), rel_err(fake, real))
    assert not mx.array_equal(fake, float_logits)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_tied_embeddings_round_trip(arch):
    model = tiny_model(arch, tie=True)
    assert "lm_head" not in model
    x = tokens()
    ref = model(x)
    prepare(model, QATConfig(weights=QuantSpec(bits=4)))
    assert isinstance(model.model.embed_tokens, QATEmbedding)
    fake = model(x)
    set_fake_quant(model, False)
    assert mx.array_equal(model(x), ref)
    set_fake_quant(model, True)
    quantize(model)
    assert isinstance(model.model.embed_tokens, nn.QuantizedEmbedding)
    assert rel_err(fake, model(x)) <= RTOL


def test_layer_types_after_prepare_and_quantize():
    model = tiny_model("qwen3_moe")
    prepare(model, QATConfig())
    moe = model.model.layers[0].mlp
    assert isinstance(moe.switch_mlp.up_proj, QATSwitchLinear)
    assert isinstance(moe.gate, QATLinear)
    assert moe.gate.spec == QuantSpec(bits=8)  # qwen3_moe's own quant_predicate
    quantize(model)
    assert isinstance(moe.switch_mlp.up_proj, QuantizedSwitchLinear)
    assert isinstance(model.lm_head, nn.QuantizedLinear)
    assert model.model.layers[0].mlp.gate.bits == 8


@pytest.mark.parametrize("kind", ["minmax", "lsq", "learned_affine"])
@pytest.mark.parametrize("cls", ["linear", "embedding", "switch"])
def test_single_layer_to_quantized_matches(kind, cls):
    mx.random.seed(3)
    spec = QuantSpec(bits=3, group_size=32)
    if cls == "linear":
        float_layer = nn.Linear(64, 48, bias=True)
        layer = QATLinear.from_float(float_layer, spec, kind)
        x = mx.random.normal((5, 64))
        args = (x,)
    elif cls == "embedding":
        float_layer = nn.Embedding(100, 64)
        layer = QATEmbedding.from_float(float_layer, spec, kind)
        args = (mx.array([[0, 5, 99, 5]]),)
    else:
        float_layer = SwitchLinear(64, 32, 4, bias=True)
        layer = QATSwitchLinear.from_float(float_layer, spec, kind)
        x = mx.random.normal((3, 1, 1, 64))
        args = (x, mx.array([[0, 2], [1, 3], [3, 3]]))
    if kind != "minmax":  # move learnable params off their init so export must use them
        for name, p in tree_flatten(layer.quantizer.trainable_parameters()):
            layer.quantizer.update({name: p * (1 + 0.1 * mx.random.uniform(shape=p.shape))})
    ref = float_layer(*args)
    layer.fake_quant = False
    assert mx.array_equal(layer(*args), ref)
    layer.fake_quant = True
    fake = layer(*args)
    q = layer.to_quantized()
    assert rel_err(fake, q(*args)) <= RTOL
    if cls == "embedding":
        h = mx.random.normal((2, 64))
        assert rel_err(layer.as_linear(h), q.as_linear(h)) <= RTOL


@pytest.mark.parametrize(
    "kind,scale_grad",
    [("minmax", "ste"), ("learned_affine", "ste"), ("learned_affine", "fixed_codes")],
)
def test_embedding_row_gather_matches_full_table(kind, scale_grad):
    """The lookup quantizes only the rows it gathers: the values of quantizing the whole table
    and then gathering, bit for bit, and the same gradients (summation order apart: a repeated
    id's cotangents are summed before or after the per-group reductions)."""
    mx.random.seed(4)
    spec = QuantSpec(bits=2, group_size=32)
    layer = QATEmbedding.from_float(nn.Embedding(64, 64), spec, kind, scale_grad=scale_grad)
    if kind == "learned_affine":  # a grid that moved off its anchors (and off the min/max)
        q = layer.quantizer
        q.scale = q.scale * (1 + 0.2 * mx.random.uniform(shape=q.scale.shape))
        q.bias = q.bias + 0.01 * mx.random.normal(q.bias.shape)
    ids = mx.array([[1, 7, 7, 63], [0, 7, 40, 1]])
    full = layer.quantizer(layer.weight)[ids]
    assert mx.array_equal(layer(ids), full)
    r = mx.random.normal((*ids.shape, 64))

    def lookup(m):
        return (m(ids) * r).sum()

    def whole_table(m):
        return (m.quantizer(m["weight"])[ids] * r).sum()

    got = dict(tree_flatten(nn.value_and_grad(layer, lookup)(layer)[1]))
    want = dict(tree_flatten(nn.value_and_grad(layer, whole_table)(layer)[1]))
    assert got.keys() == want.keys() and "weight" in got
    for k, g in want.items():
        err = (mx.abs(got[k] - g).max() / mx.maximum(mx.abs(g).max(), 1e-30)).item()
        assert err <= 1e-6, (k, err)
        assert mx.abs(g).max().item() > 0 or k.startswith("quantizer.anchor"), k


def test_ste_gradient_of_linear():
    mx.random.seed(5)
    layer = QATLinear.from_float(nn.Linear(64, 16, bias=False), QuantSpec(bits=2), "minmax")
    x = mx.random.normal((4, 64))
    g = mx.grad(lambda w: (x @ layer.quantizer(w).T).sum())(layer.weight)
    w_hat = layer.quantizer(layer.weight)
    g_ref = mx.grad(lambda w: (x @ w.T).sum())(w_hat)
    assert mx.allclose(g, g_ref, rtol=1e-6, atol=1e-6)


def _loss(model, x):
    logits = model(x[:, :-1])
    return nn.losses.cross_entropy(logits, x[:, 1:], reduction="mean")


@pytest.mark.parametrize("kind", ["minmax", "lsq", "learned_affine"])
@pytest.mark.parametrize("arch", ["llama", "qwen3_moe"])
def test_gradients_reach_every_parameter(kind, arch):
    model = tiny_model(arch, vocab=256)
    prepare(model, QATConfig(weights=QuantSpec(bits=4, group_size=32), quantizer=kind))
    x = tokens(shape=(4, 16))
    _, grads = nn.value_and_grad(model, _loss)(model, x)
    flat = dict(tree_flatten(grads))
    params = dict(tree_flatten(model.trainable_parameters()))
    assert flat.keys() == params.keys()
    learnable = [k for k in flat if ".quantizer." in k]
    assert bool(learnable) == (kind != "minmax")
    for name, g in flat.items():
        assert g.shape == params[name].shape, name
        assert bool(mx.all(mx.isfinite(g))), name
        assert mx.abs(g).max().item() > 0, f"no gradient reaches {name}"


def test_compiled_training_step_lowers_loss():
    model = tiny_model("llama")
    prepare(model, QATConfig(weights=QuantSpec(bits=4, group_size=32), quantizer="lsq"))
    optimizer = optim.Adam(learning_rate=1e-2)
    x = tokens(shape=(4, 16))
    loss_and_grad = nn.value_and_grad(model, _loss)
    state = [model.state, optimizer.state]

    def step(x):
        loss, grads = loss_and_grad(model, x)
        optimizer.update(model, grads)
        return loss

    compiled = mx.compile(step, inputs=state, outputs=state)
    losses = []
    for _ in range(10):
        losses.append(compiled(x).item())
        mx.eval(state)
    assert losses[-1] < 0.8 * losses[0], losses

    # The flag is captured at trace time: a recompiled step sees the switch.
    set_fake_quant(model, False)
    fp_loss = _loss(model, x).item()
    recompiled = mx.compile(lambda x: _loss(model, x), inputs=state)
    assert abs(recompiled(x).item() - fp_loss) <= 1e-6 * abs(fp_loss)
