"""fake_quantize and quantize_grid against MLX's own mx.quantize / mx.dequantize on the CPU.

The canonical grid is that of MLX's CPU backend (quant/affine.py); Metal's mx.quantize rounds
differently. So the reference always runs on a CPU stream (`cpu_mx_quantize`), while the code
under test runs on the default device: on a Mac, fake_quantize takes the fused Metal kernels.
"""

import itertools
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlx_qat.quant import QuantSpec, dequantize_grid, fake_quantize, quantize_grid
from mlx_qat.quant.affine import pack_codes, unpack_codes

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
AFFINE = [
    QuantSpec("affine", b, g) for b, g in itertools.product((2, 3, 4, 5, 6, 8), (32, 64, 128))
]
FP = [QuantSpec.for_mode(m) for m in ("mxfp4", "nvfp4", "mxfp8")]
SPECS = AFFINE + FP


def families(shape, seed=0):
    """The awkward inputs: each exercises one branch of the grid computation."""
    k = iter(mx.random.split(mx.random.key(seed), 8))
    normal = mx.random.normal(shape, key=next(k))
    outlier_mask = mx.random.uniform(shape=shape, key=next(k)) < 0.01
    return {
        "normal": normal * 0.02,
        "uniform": mx.random.uniform(-1, 1, shape, key=next(k)),
        "all_negative": -mx.abs(mx.random.normal(shape, key=next(k))),
        "all_positive": mx.abs(mx.random.normal(shape, key=next(k))) + 0.1,
        "zeros": mx.zeros(shape),
        "constant": mx.full(shape, 0.37),
        "ties": mx.round(mx.random.normal(shape, key=next(k)) * 8) / 2,  # exact .5 steps
        "outliers": mx.where(outlier_mask, normal * 50, normal),
        "huge": normal * 1e4,
        "tiny": normal * 1e-6,
    }


def cpu_mx_quantize(w, spec):
    """(grid, ŵ) from MLX's CPU mx.quantize / mx.dequantize, whatever the default device."""
    with mx.stream(mx.cpu):
        out = mx.quantize(w, spec.group_size, spec.bits, mode=spec.mode)
        w_hat = mx.dequantize(
            *out, group_size=spec.group_size, bits=spec.bits, mode=spec.mode, dtype=w.dtype
        )
        mx.eval(out, w_hat)
    return out, w_hat


def assert_identical(a, b, what=""):
    assert a.dtype == b.dtype, f"{what}: dtype {a.dtype} != {b.dtype}"
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    # Compare the bits through float32 (exact for every dtype here); NaN == NaN.
    na, nb = np.array(a.astype(mx.float32)), np.array(b.astype(mx.float32))
    if a.dtype in (mx.uint32, mx.uint8):
        na, nb = np.array(a), np.array(b)
    bad = ~((na == nb) | (np.isnan(na) & np.isnan(nb)))
    assert not bad.any(), f"{what}: {bad.sum()} of {bad.size} differ"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_cpu_mx_quantize_parity_matrix(spec, dtype):
    """Every mode x bits x group x dtype x input family: bit-identical forward and grid."""
    for name, w in families((4, 256)).items():
        w = w.astype(DTYPES[dtype])
        ref_grid, ref = cpu_mx_quantize(w, spec)
        assert_identical(fake_quantize(w, spec), ref, f"{spec} {dtype} {name} forward")
        grid = quantize_grid(w, spec)
        for got, want, part in zip(grid, ref_grid, ("wq", "scales", "biases")):
            assert_identical(got, want, f"{spec} {dtype} {name} {part}")
        with mx.stream(mx.cpu):
            round_trip = dequantize_grid(grid, spec, w.dtype)
        assert_identical(round_trip, ref, f"{spec} {name} round trip")


@pytest.mark.parametrize("spec", [QuantSpec("affine", 4, 64), QuantSpec.for_mode("nvfp4")], ids=str)
def test_cpu_mx_quantize_parity_compiled_and_batched(spec):
    """Same bits under mx.compile and for 3-D (stacked experts) weights."""
    w = mx.random.normal((3, 8, 128), key=mx.random.key(3))
    _, ref = cpu_mx_quantize(w, spec)
    assert_identical(mx.compile(lambda x: fake_quantize(x, spec))(w), ref, "compiled")
    assert_identical(fake_quantize(w, spec), ref, "3-D")


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 6),
    groups=st.integers(1, 4),
    spec=st.sampled_from(SPECS),
    dtype=st.sampled_from(list(DTYPES.values())),
    scale=st.floats(1e-4, 1e3),
    seed=st.integers(0, 2**30),
)
def test_cpu_mx_quantize_parity_property(rows, groups, spec, dtype, scale, seed):
    if spec.mode == "nvfp4":
        groups *= 2  # mx.quantize packs nvfp4 across the flattened array: needs 32 | size
    w = mx.random.normal((rows, groups * spec.group_size), key=mx.random.key(seed)) * scale
    w = w.astype(dtype)
    _, ref = cpu_mx_quantize(w, spec)
    assert_identical(fake_quantize(w, spec), ref, f"{spec} {dtype}")


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_pack_unpack_round_trip(bits):
    codes = mx.random.randint(0, 2**bits, (5, 128), key=mx.random.key(bits)).astype(mx.uint32)
    packed = pack_codes(codes, bits)
    assert packed.shape == (5, 128 * bits // 32)
    assert mx.array_equal(unpack_codes(packed, bits), codes)


def test_ste_gradient_is_cotangent():
    spec = QuantSpec("affine", 3, 32)
    w = mx.random.normal((8, 64), key=mx.random.key(0))
    cot = mx.random.normal((8, 64), key=mx.random.key(1))

    def f(w):
        return (fake_quantize(w, spec) * cot).sum()

    for fn in (mx.grad(f), mx.compile(mx.grad(f)), mx.grad(mx.compile(f))):
        assert mx.array_equal(fn(w), cot)
    # vjp directly, and in bfloat16
    wb = w.astype(mx.bfloat16)
    _, (g,) = mx.vjp(lambda x: fake_quantize(x, spec), [wb], [cot.astype(mx.bfloat16)])
    assert mx.array_equal(g, cot.astype(mx.bfloat16))


def test_without_ste_mlx_gradient_is_wrong():
    """Why the custom VJP exists: MLX differentiates only through the group min/max."""
    w = mx.random.normal((4, 64), key=mx.random.key(2))
    g = mx.grad(lambda w: mx.dequantize(*mx.quantize(w, 64, 4), group_size=64, bits=4).sum())(w)
    assert not mx.allclose(g, mx.ones_like(w))
    assert mx.array_equal(
        mx.grad(lambda w: fake_quantize(w, QuantSpec()).sum())(w), mx.ones_like(w)
    )


def test_compiled_training_step_with_optimizer_state():
    """A QAT linear regression trained with a compiled step (model + Adam state) converges."""

    class Lin(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = mx.random.normal((16, 64), key=mx.random.key(4)) * 0.1

        def __call__(self, x):
            return x @ fake_quantize(self.weight, QuantSpec("affine", 4, 64)).T

    model, opt = Lin(), optim.Adam(1e-2)
    x = mx.random.normal((128, 64), key=mx.random.key(5))
    y = x @ (mx.random.normal((16, 64), key=mx.random.key(6)) * 0.1).T
    state = [model.state, opt.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(x, y):
        loss, g = nn.value_and_grad(model, lambda m: ((m(x) - y) ** 2).mean())(model)
        opt.update(model, g)
        return loss

    losses = [step(x, y).item() for _ in range(60)]
    assert losses[-1] < 0.2 * losses[0]


def test_invalid_inputs_name_the_fix():
    with pytest.raises(ValueError, match="affine supports bits 2, 3, 4, 5, 6, 8"):
        QuantSpec("affine", 7, 64)
    with pytest.raises(ValueError, match="group sizes 32, 64, 128"):
        QuantSpec("affine", 4, 48)
    with pytest.raises(ValueError, match="nvfp4 requires bits=4, group_size=16"):
        QuantSpec("nvfp4", 4, 32)
    with pytest.raises(ValueError, match="unknown mode"):
        QuantSpec("int4")
    with pytest.raises(ValueError, match="not a multiple of group_size=64.*valid here: 32"):
        fake_quantize(mx.zeros((4, 96)), QuantSpec("affine", 4, 64))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        fake_quantize(mx.zeros((64,)), QuantSpec())
    with pytest.raises(TypeError, match="float array"):
        fake_quantize(mx.zeros((4, 64), dtype=mx.int32), QuantSpec())


@pytest.mark.parametrize(
    "spec,bpw",
    [
        (QuantSpec("affine", 4, 64), 4.5),
        (QuantSpec("affine", 2, 32), 3.0),
        (QuantSpec("affine", 8, 128), 8.25),
        (QuantSpec.for_mode("mxfp4"), 4.25),
        (QuantSpec.for_mode("nvfp4"), 4.5),
        (QuantSpec.for_mode("mxfp8"), 8.25),
    ],
    ids=str,
)
def test_bits_per_weight_matches_stored_size(spec, bpw):
    """Closed form, and the same figure measured from mx.quantize's outputs (16-bit scales)."""
    assert spec.bits_per_weight() == bpw
    w = mx.zeros((64, 1024), dtype=mx.float16)
    stored = sum(a.nbytes for a in mx.quantize(w, spec.group_size, spec.bits, mode=spec.mode))
    assert stored * 8 / w.size == bpw
