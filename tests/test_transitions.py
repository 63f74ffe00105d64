"""Transition statistics (mlx_qat.train.transitions, mlx_qat.quant.codes): codes counted as each
quantizer rounds, against brute-force references — MLX's own CPU `mx.quantize` (unpacked here
with numpy) for the min/max grids and fp formats, numpy transcriptions of the LSQ / SEQ /
learned-affine rounding — per layer, overall (weighted by weight count), the EMA, and the
distance to the nearest transition point."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_qat.prepare import prepare
from mlx_qat.qat_config import QATConfig
from mlx_qat.quant import QuantSpec
from mlx_qat.quant.codes import code_position, quantizer_params
from mlx_qat.train.transitions import Transitions


class Two(nn.Module):
    """Two linear layers of different sizes (so the overall rate is a weighted mean)."""

    def __init__(self, k: int = 128):
        super().__init__()
        self.a = nn.Linear(k, 8, bias=False)
        self.b = nn.Linear(k, 2, bias=False)


def two_layers(spec: QuantSpec, quantizer: str, seed: int = 0):
    mx.random.seed(seed)
    model = Two()
    model.a.weight = mx.random.normal((8, 128)) * 0.05
    model.b.weight = mx.random.normal((2, 128)) * 0.05
    prepare(model, QATConfig(weights=spec, quantizer=quantizer), enabled=True)
    return model


def unpack(wq, bits: int) -> np.ndarray:
    """LSB-first uint32 words -> codes (numpy; bits dividing 32)."""
    w = np.array(wq).astype(np.uint64)
    shifts = np.arange(0, 32, bits, dtype=np.uint64)
    return ((w[..., None] >> shifts) & ((1 << bits) - 1)).reshape(w.shape[0], -1)


def ref_codes(layer, w: np.ndarray) -> np.ndarray:
    """The codes of `w` under `layer`'s quantizer, computed independently."""
    q, spec = layer.quantizer, layer.quantizer.spec
    if q.kind == "minmax":
        with mx.stream(mx.cpu):
            wq = mx.quantize(mx.array(w), spec.group_size, spec.bits, mode=spec.mode)[0]
        c = unpack(wq, spec.bits).astype(np.int64)
        if spec.mode == "mxfp8":
            c[c == 128] = 0  # -0 and +0: one value
        return c
    if q.kind == "learned_affine":
        s = np.repeat(np.array(q.scale), spec.group_size, axis=-1)
        b = np.repeat(np.array(q.bias), spec.group_size, axis=-1)
        return np.clip(np.rint((w - b) / s), 0, 2**spec.bits - 1)
    x = w / np.array(q.alpha)  # lsq, one alpha per row
    if q.bits == 2:
        return np.rint(np.clip(x, -0.99, 0.99) * 2 - 0.5) + 2
    qn = -(2 ** (q.bits - 1))
    return np.clip(np.rint(x), qn, -qn - 1) - qn


CASES = [
    ("minmax", QuantSpec("affine", 4, 32)),
    ("minmax", QuantSpec("affine", 2, 64)),
    ("minmax", QuantSpec("mxfp4", 4, 32)),
    ("minmax", QuantSpec("nvfp4", 4, 16)),
    ("minmax", QuantSpec("mxfp8", 8, 32)),
    ("lsq", QuantSpec("affine", 4, 64)),
    ("lsq", QuantSpec("affine", 2, 64)),
    ("learned_affine", QuantSpec("affine", 3, 32)),
]


@pytest.mark.parametrize(("quantizer", "spec"), CASES, ids=lambda c: str(c))
def test_counts_match_brute_force_per_layer_and_overall(quantizer, spec):
    model = two_layers(spec, quantizer)
    stats = Transitions(model, momentum=0.9)
    layers = [model.a, model.b]
    before = stats.before()
    w0 = [np.array(layer.weight) for layer in layers]
    p0 = [quantizer_params(layer.quantizer) for layer in layers]
    mx.random.seed(1)
    step = 0.0003 if spec.mode == "mxfp8" else 0.004  # ~0.3 grid steps
    for layer in layers:  # an update that moves some codes, and the learnable grids
        layer.weight = layer.weight + mx.random.normal(layer.weight.shape) * step
        for name, v in quantizer_params(layer.quantizer).items():
            layer.quantizer[name] = v * 1.02 if name != "bias" else v
    w1 = [np.array(layer.weight) for layer in layers]
    want = []
    for layer, a, b, params in zip(layers, w0, w1, p0):
        c1 = ref_codes(layer, b)
        now = quantizer_params(layer.quantizer)
        layer.quantizer.update(params)  # the reference's grid before the update
        c0 = ref_codes(layer, a)
        layer.quantizer.update(now)
        want.append(int((c0 != c1).sum()))
    stats.after(before)
    mx.eval(stats.state)
    sizes = [w.size for w in w0]
    assert 0 < sum(want) < sum(sizes) / 2, want  # the case moves some codes, not all
    np.testing.assert_array_equal(
        np.array(stats.state["rate_layers"]), np.array(want, np.float32) / np.array(sizes)
    )
    assert stats.state["rate"].item() == pytest.approx(sum(want) / sum(sizes), rel=1e-6)
    # EMA from 0 after one step: (1 - m)·k, per layer and overall
    assert stats.state["ema"].item() == pytest.approx(0.1 * sum(want) / sum(sizes), rel=1e-5)
    # the codes themselves (not only their changes) are the reference's
    for layer, b in zip(layers, w1):
        code = code_position(layer.quantizer, layer.weight)[0]
        np.testing.assert_array_equal(np.array(code).reshape(b.shape), ref_codes(layer, b))


def test_a_weight_exactly_on_a_half_step_and_across_it():
    """4-bit min/max groups of 32 holding 0 and 15: MLX's grid is s = -1, b = 15, so
    u = 15 - w and the code is rint(u), ties to even. Moving w: 12.6 -> 12.5 (u 2.4 -> 2.5:
    code 2 -> 2, the tie goes to even), 11.6 -> 11.5 (u 3.4 -> 3.5: 3 -> 4), 13.49 -> 13.51
    (u 1.51 -> 1.49: 2 -> 1), 7.2 -> 7.4 (u 7.8 -> 7.6: stays 8). Two transitions in 32."""
    row = np.full(32, 5.0, np.float32)
    row[:2] = (0.0, 15.0)
    moves = [(12.6, 12.5), (11.6, 11.5), (13.49, 13.51), (7.2, 7.4)]
    w0, w1 = row.copy(), row.copy()
    for i, (a, b) in enumerate(moves):
        w0[2 + i], w1[2 + i] = a, b
    model = Two(k=32)
    model.a.weight = mx.array(np.tile(w0, (8, 1)))
    model.b.weight = mx.array(np.tile(w0, (2, 1)))
    prepare(model, QATConfig(weights=QuantSpec("affine", 4, 32)), enabled=True)
    stats = Transitions(model, momentum=0.99)
    before = stats.before()
    model.a.weight = mx.array(np.tile(w1, (8, 1)))  # layer b does not move
    stats.after(before)
    assert np.array(stats.state["rate_layers"]).tolist() == [2 / 32, 0.0]
    assert stats.state["rate"].item() == pytest.approx(2 * 8 / (32 * 10))
    # MLX's own quantizer agrees on every code
    for w in (w0, w1):
        np.testing.assert_array_equal(ref_codes(model.a, np.tile(w, (8, 1)))[0], [
            15, 0, 2, 3 if w is w0 else 4, 2 if w is w0 else 1, 8, *[10] * 26,
        ])  # fmt: skip


def test_distance_to_the_nearest_transition_point():
    """d = |frac(u) - 1/2| averaged over weights inside the grid: hand values on the grid
    above (u = 15 - w) and on the FP4 ladder; and against MLX's scales/biases on random
    weights."""
    row = np.full(32, 5.0, np.float32)  # u = 10: on a level, d = 1/2
    row[:2] = (0.0, 15.0)  # u = 15 and 0: levels, d = 1/2
    row[2:6] = (12.5, 12.25, 11.0, 3.75)  # u = 2.5, 2.75, 4, 11.25: d = 0, 1/4, 1/2, 1/4
    model = Two(k=32)
    model.a.weight, model.b.weight = mx.array(np.tile(row, (8, 1))), mx.array(np.tile(row, (2, 1)))
    prepare(model, QATConfig(weights=QuantSpec("affine", 4, 32)), enabled=True)
    stats = Transitions(model)
    stats.after(stats.before())
    want = (0.5 * 28 + 0 + 0.25 + 0.5 + 0.25) / 32
    assert stats.state["distance"].item() == pytest.approx(want, rel=1e-6)
    # FP4 (mxfp4, a group whose max is 6, so its scale is 1): 6 is a level (d = 1/2); 2.5 is
    # the midpoint of the levels 2 and 3 (d = 0); 3.25 a quarter of the way from 3 to 4
    # (d = 1/4); 0.25 the midpoint of 0 and 0.5; -3.5 the midpoint of -3 and -4.
    q = two_layers(QuantSpec("mxfp4", 4, 32), "minmax").a.quantizer
    x = np.zeros((1, 32), np.float32)
    x[0, :5] = (6.0, 2.5, 3.25, 0.25, -3.5)
    _, u, lo, hi = code_position(q, mx.array(x))
    d = np.abs(np.array(u) - np.floor(np.array(u)) - 0.5).reshape(-1)
    np.testing.assert_allclose(d[:5], [0.5, 0.0, 0.25, 0.0, 0.0], atol=1e-6)
    assert (lo, hi) == (0.0, 7.0)
    # random weights: u from MLX's own (scale, bias)
    model = two_layers(QuantSpec("affine", 4, 64), "minmax")
    stats = Transitions(model)
    stats.after(stats.before())
    total = count = 0.0
    for layer in (model.a, model.b):
        w = np.array(layer.weight)
        with mx.stream(mx.cpu):
            _, s, b = mx.quantize(layer.weight, 64, 4)
        u = (w - np.repeat(np.array(b), 64, -1)) / np.repeat(np.array(s), 64, -1)
        inside = (u >= 0) & (u <= 15)
        total += (np.abs(u - np.floor(u) - 0.5) * inside).sum()
        count += inside.sum()
    assert stats.state["distance"].item() == pytest.approx(total / count, rel=1e-5)


def test_ema_over_steps_and_the_state_round_trip():
    model = two_layers(QuantSpec("affine", 4, 32), "minmax")
    stats = Transitions(model, momentum=0.8)
    k, ema = [], 0.0
    for i in range(4):
        before = stats.before()
        mx.random.seed(10 + i)
        model.a.weight = model.a.weight + mx.random.normal(model.a.weight.shape) * 0.003
        stats.after(before)
        k.append(stats.state["rate"].item())
        ema = 0.8 * ema + 0.2 * k[-1]
    assert stats.state["ema"].item() == pytest.approx(ema, rel=1e-5)
    assert stats.state["rate_layers"][1].item() == 0.0  # layer b never moved
    other = Transitions(model, momentum=0.8)
    other.load_json(stats.to_json())
    for key, v in stats.state.items():
        assert mx.array_equal(other.state[key], v), key
    with pytest.raises(ValueError, match="other QAT layers"):
        other.load_json({**stats.to_json(), "layers": ["x"]})


def test_fp8_signed_zero_is_one_code():
    """mxfp8 rounds a tiny negative element to -0 (byte 128) and a tiny positive one to +0:
    one value, so moving between them is not a transition."""
    q = two_layers(QuantSpec("mxfp8", 8, 32), "minmax").a.quantizer
    x = np.zeros((1, 32), np.float32)
    x[0, :3] = (448.0, -1e-6, 1e-6)  # scale 1
    with mx.stream(mx.cpu):
        raw = unpack(mx.quantize(mx.array(x), 32, 8, mode="mxfp8")[0], 8)[0]
    assert raw[1:3].tolist() == [128, 0]
    code = np.array(code_position(q, mx.array(x))[0]).reshape(-1)
    assert code[1] == code[2] == 0
