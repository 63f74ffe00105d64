"""Learnable quantizers: gradients vs a numpy transcription of the formulas, exact MLX grids.

The quantizers run on the default device (the fused kernels on a Mac); the MLX references they
must equal bit for bit, mx.quantize / mx.dequantize, run on MLX's CPU backend, whose grid is
the canonical one (`cpu_dequantize`)."""

from dataclasses import replace
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_qat.quant import QuantSpec, make_quantizer
from mlx_qat.quant.affine import minmax_params

GS = 32


def cpu_dequantize(*grid, **kwargs) -> mx.array:
    """mx.dequantize on MLX's CPU backend (the grid the project matches bit for bit)."""
    with mx.stream(mx.cpu):
        out = mx.dequantize(*grid, **kwargs)
        mx.eval(out)
    return out


def weights(shape=(6, 128), seed=0):
    return mx.random.normal(shape, key=mx.random.key(seed)) * 0.05


def grads(q, w, cot):
    """(∂L/∂w, ∂L/∂params) for L = Σ cot·q(w)."""

    def loss(params, w):
        q.update(params)
        return (q(w) * cot).sum()

    params = q.trainable_parameters()
    gp, gw = mx.grad(loss, argnums=(0, 1))(params, w)
    return np.array(gw), {k: np.array(v) for k, v in gp.items()}


# ---- numpy transcriptions (ParetoQ's hand-written backward; LSQ+ for learned affine) ----


def np_lsq(w, alpha, bits, per_group):
    """Forward ŵ, ∂ŵ/∂w mask and the per-element α-gradient factor (before g and the sum)."""
    rows, k = w.shape
    wg = w.reshape(rows, k // GS, GS).astype(np.float64)
    a = np.maximum(alpha, 1e-5)[:, :, None] if per_group else np.maximum(alpha, 1e-5)[:, None, :]
    x = wg / a
    if bits == 2:
        c = 0.99
        q = (np.round(np.clip(x, -c, c) * 2 - 0.5) + 0.5) / 2
        inside = np.abs(x) <= c
        factor = np.where(inside, q - x, np.where(x < 0, -0.75, 0.75))
        qp = 1
    else:
        qn, qp = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        q = np.clip(np.round(x), qn, qp)
        inside = (x >= qn) & (x <= qp)
        factor = np.where(inside, q - x, q)
    g = 1 / np.sqrt(w.size * max(qp, 1))
    return (q * a).reshape(w.shape), inside.reshape(w.shape), factor, g


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("per", ["row", "group"])
def test_lsq_gradients_match_paretoq(bits, per):
    w = weights(seed=bits)
    cot = mx.random.normal(w.shape, key=mx.random.key(9))
    q = make_quantizer("lsq", QuantSpec("affine", bits, GS), w, per=per)
    q.alpha = q.alpha * 0.6  # shrink the step so that some weights clip
    gw, gp = grads(q, w, cot)
    w_np, cot_np, alpha = np.array(w), np.array(cot), np.array(q.alpha)
    ref, inside, factor, g = np_lsq(w_np, alpha, bits, per == "group")
    np.testing.assert_allclose(np.array(q(w)), ref, atol=1e-6)
    assert 0 < inside.mean() < 1, "the test must exercise both the clip and the inside"
    np.testing.assert_allclose(gw, cot_np * inside, atol=1e-6)
    per_elem = factor * cot_np.reshape(factor.shape) * g
    ref_alpha = per_elem.sum(-1) if per == "group" else per_elem.sum((-2, -1))[:, None]
    np.testing.assert_allclose(gp["alpha"], ref_alpha, atol=1e-6)


def test_sign_quantizer_gradients():
    w = weights(seed=11)
    cot = mx.random.normal(w.shape, key=mx.random.key(12))
    q = make_quantizer("lsq", QuantSpec("affine", 2, GS), w)
    from mlx_qat.quant import LSQQuantizer

    q = LSQQuantizer(1, GS, w.shape)
    q.init_from(w)
    q.alpha = q.alpha * 2.0
    gw, gp = grads(q, w, cot)
    w_np, c_np, a = np.array(w), np.array(cot), np.array(q.alpha)
    np.testing.assert_allclose(np.array(q(w)), a * np.sign(w_np), atol=1e-7)
    np.testing.assert_allclose(gw, c_np * (np.abs(w_np / a) <= 1), atol=1e-7)
    ref = (c_np * np.sign(w_np)).sum(-1, keepdims=True) / np.sqrt(w_np.size)
    np.testing.assert_allclose(gp["alpha"], ref, atol=1e-6)
    with pytest.raises(ValueError, match="no MLX export"):
        q.grid(w)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_learned_affine_gradients(bits):
    w = weights(seed=20 + bits)
    cot = mx.random.normal(w.shape, key=mx.random.key(21))
    q = make_quantizer("learned_affine", QuantSpec("affine", bits, GS), w)
    q.scale = q.scale * 0.8  # shrink so that the grid clips some weights
    q.bias = q.bias * 0.9
    gw, gp = grads(q, w, cot)
    # x in float32, as the quantizer computes it: at 8 bits x reaches 255 and float64 would
    # differ by ~1e-5 from the float32 rounding alone; the sums are done in float64.
    wg = np.array(w).reshape(6, -1, GS)
    s, b = np.array(q.scale)[..., None], np.array(q.bias)[..., None]
    x = ((wg - b) / s).astype(np.float64)
    n = 2**bits - 1
    code = np.clip(np.round(x), 0, n)
    inside = (x >= 0) & (x <= n)
    c = np.array(cot).reshape(wg.shape)
    assert 0 < inside.mean() < 1
    np.testing.assert_allclose(np.array(q(w)).reshape(wg.shape), code * s + b, atol=1e-6)
    np.testing.assert_allclose(gw.reshape(wg.shape), c * inside, atol=1e-7)
    terms = c * np.where(inside, code - x, code)
    # float32 sums of up to 255-sized terms: bound the error relative to the terms' L1 norm.
    assert (np.abs(gp["scale"] - terms.sum(-1)) <= 1e-6 * np.abs(terms).sum(-1)).all()
    np.testing.assert_allclose(gp["bias"], (c * ~inside).sum(-1), atol=1e-6)


def test_learned_affine_starts_on_the_cpu_mx_quantize_grid():
    w = weights(seed=30)
    q = make_quantizer("learned_affine", QuantSpec("affine", 4, GS), w)
    with mx.stream(mx.cpu):
        grid = mx.quantize(w, GS, 4)
    ref = cpu_dequantize(*grid, group_size=GS, bits=4)
    assert mx.array_equal(q(w), ref)
    s, b = minmax_params(w.reshape(6, -1, GS), 4)
    assert mx.array_equal(q.scale, s.squeeze(-1)) and mx.array_equal(q.bias, b.squeeze(-1))


CASES = [("minmax", b) for b in (2, 3, 4, 6, 8)]
CASES += [("lsq", b) for b in (2, 3, 4, 6, 8)] + [("learned_affine", b) for b in (2, 3, 4, 6, 8)]


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16], ids=str)
@pytest.mark.parametrize("kind,bits", CASES)
def test_grid_round_trip_through_cpu_dequantize_is_exact(kind, bits, dtype):
    """MLX's CPU mx.dequantize of the exported grid == the fake-quant forward, bit for bit."""
    w = weights((4, 3, 128), seed=bits).astype(dtype)  # 3-D: stacked experts work too
    q = make_quantizer(kind, QuantSpec("affine", bits, GS), w)
    if kind == "lsq":
        q.alpha = q.alpha * 0.7
    grid = q.grid(w)
    assert grid.wq.dtype == mx.uint32 and grid.scales.dtype == dtype
    out = cpu_dequantize(*grid, group_size=GS, bits=bits, dtype=dtype)
    assert mx.array_equal(out, q(w)), f"{kind} {bits}-bit"


def test_lsq_maps_to_affine_levels():
    """LSQ codes are the integers Qn..Qp: scale = α, bias = Qn·α; SEQ: α/2 and -0.75α."""
    w = weights(seed=40)
    for bits in (2, 4):
        q = make_quantizer("lsq", QuantSpec("affine", bits, GS), w)
        grid = q.grid(w)
        alpha = q.alpha.squeeze(-1)[:, None]
        if bits == 2:
            want_s, want_b = alpha / 2, -0.75 * alpha
        else:
            want_s, want_b = alpha, -8 * alpha
        assert mx.allclose(grid.scales, mx.broadcast_to(want_s, grid.scales.shape), rtol=0, atol=0)
        assert mx.allclose(grid.biases, mx.broadcast_to(want_b, grid.biases.shape), atol=1e-9)


def test_scale_dtype_rounds_in_the_forward():
    """With scale_dtype the forward uses the rounded scales, so export in that dtype is exact
    (against MLX's CPU mx.dequantize)."""
    w = weights(seed=50)
    for kind in ("minmax", "lsq", "learned_affine"):
        q = make_quantizer(kind, QuantSpec("affine", 4, GS), w, scale_dtype=mx.float16)
        grid = q.grid(w)
        assert grid.scales.dtype == mx.float16
        # MLX dequantizes in the scales' dtype (float16 here); the forward did the same.
        out = cpu_dequantize(*grid, group_size=GS, bits=4)
        assert out.dtype == mx.float16
        assert mx.array_equal(out.astype(mx.float32), q(w)), kind


class TinyMLP(nn.Module):
    def __init__(self, kind, bits):
        super().__init__()
        k = mx.random.split(mx.random.key(7))
        self.w1 = mx.random.normal((64, 32), key=k[0]) * 0.2
        self.w2 = mx.random.normal((8, 64), key=k[1]) * 0.2
        self.q1 = make_quantizer(kind, QuantSpec("affine", bits, GS), self.w1)
        self.q2 = make_quantizer(kind, QuantSpec("affine", bits, GS), self.w2)

    def __call__(self, x):
        return nn.gelu(x @ self.q1(self.w1).T) @ self.q2(self.w2).T


@pytest.mark.parametrize(
    "kind,bits", [("minmax", 4), ("lsq", 2), ("lsq", 4), ("learned_affine", 3)]
)
def test_tiny_model_trains_with_each_quantizer(kind, bits):
    model = TinyMLP(kind, bits)
    opt = optim.Adam(3e-3)
    x = mx.random.normal((256, 32), key=mx.random.key(1))
    y = mx.random.randint(0, 8, (256,), key=mx.random.key(2))
    state = [model.state, opt.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step():
        def loss_fn(m):
            return nn.losses.cross_entropy(m(x), y).mean()

        loss, g = nn.value_and_grad(model, loss_fn)(model)
        opt.update(model, g)
        return loss

    losses = [step().item() for _ in range(40)]
    assert losses[-1] < 0.7 * losses[0], (kind, losses[0], losses[-1])


def test_quantizer_errors():
    w = weights()
    with pytest.raises(ValueError, match="choose one of minmax, lsq, learned_affine"):
        make_quantizer("adaround", QuantSpec(), w)
    with pytest.raises(ValueError, match="lsq.*needs mode='affine'"):
        make_quantizer("lsq", QuantSpec.for_mode("mxfp4"), w)
    with pytest.raises(ValueError, match="not a multiple of group_size"):
        make_quantizer("lsq", QuantSpec("affine", 4, 64), mx.zeros((4, 96)))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_learned_affine_fixed_codes_gradients(bits):
    """scale_grad="fixed_codes": codes read on the frozen anchor grid (the initial one), valued
    by the learned grid; DWQ's gradient for the grid, straight-through (times s/s₀) for the
    weight; against a numpy transcription of the formulas."""
    w = weights(seed=40 + bits)
    cot = mx.random.normal(w.shape, key=mx.random.key(41))
    q = make_quantizer("learned_affine", QuantSpec("affine", bits, GS), w, scale_grad="fixed_codes")
    s0, b0 = np.array(q.scale)[..., None], np.array(q.bias)[..., None]
    q.scale, q.bias = q.scale * 0.8, q.bias * 0.9  # the learned grid moved; the anchors did not
    assert "anchor_scale" not in dict(tree_flatten(q.trainable_parameters()))
    gw, gp = grads(q, w, cot)
    assert set(gp) == {"scale", "bias"}
    wg = np.array(w).reshape(6, -1, GS)
    s, b = np.array(q.scale)[..., None], np.array(q.bias)[..., None]
    x = ((wg - b0) / s0).astype(np.float64)
    code = np.clip(np.round(x), 0, 2**bits - 1)
    inside = (x >= 0) & (x <= 2**bits - 1)
    c = np.array(cot).reshape(wg.shape)
    np.testing.assert_allclose(np.array(q(w)).reshape(wg.shape), code * s + b, atol=1e-6)
    np.testing.assert_allclose(gw.reshape(wg.shape), c * inside * s / s0, rtol=1e-6, atol=1e-7)
    terms = c * code
    assert (np.abs(gp["scale"] - terms.sum(-1)) <= 1e-6 * np.abs(terms).sum(-1)).all()
    np.testing.assert_allclose(gp["bias"], c.sum(-1), atol=1e-5)
    # the export: the anchor grid's codes with the learned scales and biases
    g = q.grid(w)
    np.testing.assert_array_equal(
        np.array(cpu_dequantize(g.wq, mx.ones_like(g.scales), mx.zeros_like(g.biases),
                                group_size=GS, bits=bits)).reshape(wg.shape), code)  # fmt: skip
    np.testing.assert_allclose(np.array(g.scales), s[..., 0])


def test_fixed_codes_grid_gradient_is_dwqs():
    """The scale/bias gradient of a QATLinear with fixed codes equals the one MLX's own
    quantized matmul gives the exported `nn.QuantizedLinear` (what mlx-lm's DWQ trains)."""
    from mlx_qat.layers import QATLinear

    spec = QuantSpec("affine", 3, GS)
    lin = nn.Linear(128, 16, bias=False)
    lin.weight = weights((16, 128), seed=50)
    qat = QATLinear.from_float(lin, spec, "learned_affine", scale_grad="fixed_codes")
    ref = qat.to_quantized()
    x = mx.random.normal((5, 128), key=mx.random.key(51))
    y = mx.random.normal((5, 16), key=mx.random.key(52))

    def loss(m):
        return ((m(x) - y) ** 2).sum()

    g_qat = nn.value_and_grad(qat, loss)(qat)[1]["quantizer"]
    with mx.stream(mx.cpu):
        ref.freeze()
        ref.unfreeze(keys=["scales", "biases"])
        g_ref = nn.value_and_grad(ref, loss)(ref)[1]
        mx.eval(g_ref)
    for mine, theirs in (("scale", "scales"), ("bias", "biases")):
        np.testing.assert_allclose(g_qat[mine], g_ref[theirs], rtol=1e-4, atol=1e-4)
    # The straight-through gradient differs (it is the rounding error's): the test can fail.
    ste = QATLinear.from_float(lin, spec, "learned_affine")
    g_ste = nn.value_and_grad(ste, loss)(ste)[1]["quantizer"]
    assert not np.allclose(g_ste["scale"], g_ref["scales"], rtol=1e-2, atol=1e-2)


def test_scale_grad_errors():
    w = weights()
    with pytest.raises(ValueError, match="scale_grad='codes'.*ste, fixed_codes"):
        make_quantizer("learned_affine", QuantSpec("affine", 4, GS), w, scale_grad="codes")
    from mlx_qat import QATConfig

    with pytest.raises(ValueError, match="learned_affine option.*quantizer='learned_affine'"):
        QATConfig(quantizer="lsq", scale_grad="fixed_codes")
    from mlx_qat.train.config import TrainConfig

    with pytest.raises(ValueError, match="scale_grad='fixed_codes'.*--quantizer learned_affine"):
        TrainConfig(scale_grad="fixed_codes")


def test_scale_grad_reaches_every_layer_and_the_saved_config():
    """TrainConfig -> QATConfig -> prepare -> each quantizer, and through to_dict/from_dict (the
    checkpoint's copy, which convert and resume rebuild from); the hash changes only when set."""
    from mlx_qat import QATConfig, prepare
    from mlx_qat.models.build import qat_config
    from mlx_qat.train.config import TrainConfig

    cfg = TrainConfig(quantizer="learned_affine", scale_grad="fixed_codes")
    assert cfg.hash() != replace(cfg, scale_grad="ste").hash()
    qcfg = QATConfig.from_dict(qat_config(cfg).to_dict())
    model = nn.Module()
    model.embed, model.proj = nn.Embedding(32, 128), nn.Linear(128, 16)
    model = prepare(model, qcfg)
    qs = [m for _, m in model.named_modules() if m.__class__.__name__ == "LearnedAffineQuantizer"]
    assert qs and all(q.scale_grad == "fixed_codes" for q in qs)
