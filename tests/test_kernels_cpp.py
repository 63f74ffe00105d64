"""The Metal/CUDA kernel bodies, compiled as plain C++, against the pure-MLX reference.

The harness (tests/kernel_harness/cpp.py) pastes the very strings mlx_qat/kernels/gpu.py hands
to Metal/CUDA into C++ and runs every thread of a launch, including the surplus threads of a
CUDA grid, 32 at a time as one SIMD group whose shuffles are emulated in lockstep
(kernel_harness/simd_emulation.py). Forwards must match bit for bit; backward reductions up to
float32 summation order. With the harness standing in for the GPU, the quantizers' fused glue,
the user-facing check and the self-check (quant/kernel_check.py) run end to end.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from kernel_harness import cpp, standins

from mlx_qat.kernels import FP_KINDS, sources
from mlx_qat.kernels.launch import launch_geometry, threads_launched
from mlx_qat.quant import (
    QuantSpec,
    backend,
    learned_affine,
    lsq,
    reference_fake_quant,
)
from mlx_qat.quant.affine import codes_from_params, dequantize_codes, group, minmax_params
from mlx_qat.quant.affine import fake_quant_minmax as reference_minmax
from mlx_qat.quant.kernel_cases import (
    bits_of,
    fp_families,
    learned_case,
    lsq_case,
    minmax_families,
    mismatches,
    stacked,
)
from mlx_qat.quant.spec import AFFINE_BITS, AFFINE_GROUP_SIZES

DTYPES = (mx.float32, mx.float16, mx.bfloat16)


@pytest.fixture(scope="module")
def harness():
    h = cpp.shared()
    if h is None:
        pytest.skip("no C++ compiler (g++/c++ or $CXX): cannot build the kernel harness")
    return h


def lsq_alpha(w, alpha, gs):
    """The α the fused LSQ kernels get: clamped, float32, one per group (quant/lsq.py)."""
    return backend.per_group(lsq.clamp_alpha(alpha), w, gs)


def learned_params(w, scale, bias, gs):
    """The (scale, bias) the learned-affine kernels get (quant/learned_affine.py)."""
    return learned_affine._kernel_params(w, scale, bias, gs)


def cuda_threads(n_groups: int, group_size: int, job: str = "forward") -> int:
    """Threads a CUDA launch of `job` starts (surplus warps/threads included)."""
    per = sources.threads_per_group(job, group_size)
    return threads_launched(*launch_geometry(n_groups, per), "cuda")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_minmax_forward_bit_exact(harness, dtype):
    for bits in AFFINE_BITS:
        for gs in AFFINE_GROUP_SIZES:
            fam = minmax_families(bits, gs, seed=bits * gs)
            w = stacked(fam, dtype)
            ng = w.size // gs
            got = harness.forward(w, sources.KIND_MINMAX, bits, gs, n_threads=cuda_threads(ng, gs))
            ref = reference_minmax(w, bits, gs)
            assert mismatches(got, ref) == 0, (dtype, bits, gs)


@pytest.mark.parametrize("dequant", (mx.float16, mx.bfloat16, mx.float32), ids=str)
def test_minmax_forward_dequant_dtype(harness, dequant):
    # ŵ = T(D(code)·D(s) + D(b)): scales stored in another dtype than the weight.
    for dtype in DTYPES:
        w = stacked(minmax_families(4, 64, seed=7), dtype)
        wg = group(w, 64).astype(mx.float32)
        s, b = minmax_params(wg, 4)
        code = codes_from_params(wg, s, b, 4)
        ref = dequantize_codes(code, s, b, dequant).astype(dtype).reshape(w.shape)
        got = harness.forward(w, sources.KIND_MINMAX, 4, 64, dequant_dtype=dequant)
        assert mismatches(got, ref) == 0, (dtype, dequant)


@pytest.mark.parametrize("bits", (1, 2, 3, 4, 8))
@pytest.mark.parametrize("per", ("row", "group"))
def test_lsq_forward_bit_exact(harness, bits, per):
    gs = 64
    kind = {1: sources.KIND_SIGN, 2: sources.KIND_SEQ}.get(bits, sources.KIND_LSQ)
    w32, alpha = lsq_case(bits, gs, per, seed=bits)
    for dtype in DTYPES:
        for sd in (None, mx.float16):
            w = w32.astype(dtype)
            ref = lsq.lsq_function(bits, gs, sd)(w, alpha)
            a = lsq_alpha(w, alpha, gs)
            got = harness.forward(w, kind, bits, gs, p0=a, dequant_dtype=sd)
            assert mismatches(got, ref) == 0, (dtype, sd)


@pytest.mark.parametrize("bits", (2, 4, 8))
def test_learned_affine_forward_bit_exact(harness, bits):
    for gs in (32, 128):
        w32, scale, bias = learned_case(bits, gs, seed=bits + gs)
        for dtype in DTYPES:
            for sd in (None, mx.bfloat16):
                w = w32.astype(dtype)
                ref = learned_affine.learned_affine_function(bits, gs, sd)(w, scale, bias)
                s, b = learned_params(w, scale, bias, gs)
                got = harness.forward(w, sources.KIND_LEARNED, bits, gs, s, b, dequant_dtype=sd)
                assert mismatches(got, ref) == 0, (gs, dtype, sd)


@pytest.mark.parametrize("mode", ("mxfp4", "mxfp8", "nvfp4"))
def test_fp_forward_bit_exact(harness, mode):
    spec = QuantSpec.for_mode(mode)
    fam = {**minmax_families(4, 32, seed=11), **fp_families(seed=12)}
    for dtype in DTYPES:
        w = stacked(fam, dtype)
        ng = w.size // spec.group_size
        n_threads = cuda_threads(ng, spec.group_size, "fp_forward")
        got = harness.fp_forward(w, FP_KINDS[mode], spec.group_size, n_threads=n_threads)
        assert mismatches(got, reference_fake_quant(w, spec)) == 0, dtype


@pytest.mark.parametrize("mode", ("mxfp4", "nvfp4"))
def test_fp_forward_odd_groups_and_surplus_warps(harness, mode):
    # nvfp4: 3 groups of 16 fill 1.5 SIMD groups; the spare half-warp shuffles but must not
    # load or store (the harness fails on a store past the last group), and 256 threads (one
    # CUDA block) add whole surplus warps that must leave before the shuffles.
    spec = QuantSpec.for_mode(mode)
    w = stacked(fp_families(seed=4), mx.bfloat16)[:1, : 3 * spec.group_size]
    ref = reference_fake_quant(w, spec)
    for n_threads in (None, 256):
        got = harness.fp_forward(w, FP_KINDS[mode], spec.group_size, n_threads=n_threads)
        assert mismatches(got, ref) == 0, n_threads


def _close(a: mx.array, b: mx.array) -> None:
    a, b = np.array(a.astype(mx.float32)), np.array(b.astype(mx.float32))
    scale = np.abs(b).max() + 1e-30
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("bits", (1, 2, 4, 8))
@pytest.mark.parametrize("per", ("row", "group"))
def test_lsq_backward(harness, bits, per):
    gs = 64
    kind = {1: sources.KIND_SIGN, 2: sources.KIND_SEQ}.get(bits, sources.KIND_LSQ)
    w32, alpha = lsq_case(bits, gs, per, seed=10 + bits)
    cot32 = mx.random.normal(w32.shape, key=mx.random.key(bits))
    for dtype in (mx.float32, mx.bfloat16):
        w, cot = w32.astype(dtype), cot32.astype(dtype)
        fn = lsq.lsq_function(bits, gs)
        _, (dw_ref, da_ref) = mx.vjp(fn, [w, alpha], [cot])
        a = lsq_alpha(w, alpha, gs)
        ng = w.size // gs
        dw, red = harness.backward(
            w, cot, kind, bits, gs, a, n_threads=cuda_threads(ng, gs, "backward")
        )
        assert mismatches(dw, dw_ref) == 0
        da = red[:, 0].reshape(w.shape[0], -1)
        if per == "row":
            da = da.sum(axis=-1, keepdims=True)
        _close(da * lsq.grad_scale(w.size, bits), da_ref)


@pytest.mark.parametrize("bits", (2, 4, 8))
def test_learned_affine_backward(harness, bits):
    gs = 64
    w32, scale, bias = learned_case(bits, gs, seed=20 + bits)
    cot32 = mx.random.normal(w32.shape, key=mx.random.key(bits))
    for dtype in (mx.float32, mx.float16):
        w, cot = w32.astype(dtype), cot32.astype(dtype)
        fn = learned_affine.learned_affine_function(bits, gs)
        _, (dw_ref, ds_ref, db_ref) = mx.vjp(fn, [w, scale, bias], [cot])
        s, b = learned_params(w, scale, bias, gs)
        dw, red = harness.backward(w, cot, sources.KIND_LEARNED, bits, gs, s, b)
        assert mismatches(dw, dw_ref) == 0
        _close(red[:, 0].reshape(scale.shape), ds_ref)
        _close(red[:, 1].reshape(bias.shape), db_ref)


def test_surplus_threads_write_nothing(harness):
    # The harness gives outputs room for every launched thread and fails (exit 5) when a
    # thread past the last group writes: 3 groups run with 256 threads, as a CUDA block would
    # (the forward: 3 live warps and 5 surplus ones, which must leave before any shuffle).
    w = stacked(minmax_families(4, 128, seed=3), mx.float32)[:1, :384]
    got = harness.forward(w, sources.KIND_MINMAX, 4, 128, n_threads=256)
    assert mismatches(got, reference_minmax(w, 4, 128)) == 0
    cot = mx.ones_like(w)
    s, b = learned_params(w, mx.ones((1, 3)), mx.zeros((1, 3)), 128)
    dw, _ = harness.backward(w, cot, sources.KIND_LEARNED, 4, 128, s, b, n_threads=256)
    assert dw.shape == w.shape


def test_minmax_forward_nan_inf_signed_zero(harness):
    # A NaN anywhere in a group makes the whole group NaN (qat_max/qat_min's rule, kept by the
    # lane butterfly); ±inf, ±0 and mixed groups give the reference's bits. NaN payloads are
    # not compared: they depend on the reduction order (and on the GPU's NaN).
    r = np.random.default_rng(5)
    base = r.normal(0, 1, (8, 384)).astype(np.float32)
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], np.float32)
    mask = r.random(base.shape)
    base[mask < 0.004] = np.nan
    base[(mask >= 0.004) & (mask < 0.008)] = r.choice(
        specials[1:3], ((mask >= 0.004) & (mask < 0.008)).sum()
    )
    base[mask > 0.6] = r.choice(specials[3:], (mask > 0.6).sum())
    base[7] = np.where(r.random(384) < 0.5, 0.0, -0.0)  # all-zero groups of both signs
    base[6, 33] = np.nan  # a NaN in a lane's second element (group size 64, 128)
    for dtype in DTYPES:
        for gs in AFFINE_GROUP_SIZES:
            w = mx.array(base).astype(dtype)
            got, ref = harness.forward(w, sources.KIND_MINMAX, 4, gs), reference_minmax(w, 4, gs)
            g32, r32 = np.array(got.astype(mx.float32)), np.array(ref.astype(mx.float32))
            assert np.array_equal(np.isnan(g32), np.isnan(r32)), (dtype, gs)
            nan_groups = np.isnan(base.reshape(-1, gs)).any(axis=1)
            assert np.isnan(g32.reshape(-1, gs)[nan_groups]).all()
            keep = ~np.isnan(r32)
            assert np.array_equal(bits_of(got)[keep], bits_of(ref)[keep]), (dtype, gs)


def test_simd_emulation_catches_a_short_warp(harness):
    # 3 groups need 96 threads; with 95 the last warp lacks lane 31, which lanes 15, 23, 27,
    # 29 and 30 read in the butterfly: on a GPU undefined, here exit status 7.
    w = stacked(minmax_families(4, 32, seed=3), mx.float32)[:1, :96]
    with pytest.raises(RuntimeError, match="exited 7.*not launched"):
        harness.forward(w, sources.KIND_MINMAX, 4, 32, n_threads=95)


SIMD_PROBE = r"""
// Lane l posts 100 + l; returns the xor partner's value, the lanes' max and min, and the max
// over aligned blocks of 8 lanes; a lane given by argv[1] returns early (divergence) unless -1.
static int quitter = -1;
static float out[4][32];
static void body(unsigned int t) {
  const int lane = (int)(t % 32);
  if (lane == quitter) return;
  const float v = 100.0f + (float)lane;
  out[0][lane] = QAT_SHFL_XOR(v, 5);
  out[1][lane] = qat_lanes_max(lane == 3 ? -v : v, 32);
  out[2][lane] = qat_lanes_min(lane == 9 ? NAN : v, 32);
  out[3][lane] = qat_lanes_max(v, 8);
}
int main(int argc, char** argv) {
  quitter = std::atoi(argv[1]);
  qat_launch(32, body);
  for (int l = 0; l < 32; ++l) std::printf("%g %g %g %g\n", out[0][l], out[1][l], out[2][l], out[3][l]);
  return 0;
}
"""


def test_simd_emulation_semantics(harness, tmp_path):
    # The emulated shuffle and the shared butterfly helpers on known values; divergence fails.
    import subprocess

    from kernel_harness.simd_emulation import SIMD_EMULATION

    src = tmp_path / "probe.cpp"
    src.write_text("\n".join([cpp.PRELUDE, SIMD_EMULATION, sources.COMMON, SIMD_PROBE]))
    exe = tmp_path / "probe"
    subprocess.run([cpp.compiler(), "-std=c++17", "-O2", "-o", str(exe), str(src)], check=True)
    rows = subprocess.run([str(exe), "-1"], capture_output=True, text=True, check=True)
    got = np.array([[float(x) for x in line.split()] for line in rows.stdout.splitlines()])
    lanes = np.arange(32)
    assert np.array_equal(got[:, 0], 100 + (lanes ^ 5))
    assert np.array_equal(got[:, 1], np.full(32, 131.0))
    assert np.isnan(got[:, 2]).all()  # a NaN in one lane reaches all lanes
    assert np.array_equal(got[:, 3], 100 + (lanes | 7))
    bad = subprocess.run([str(exe), "7"], capture_output=True, text=True, check=False)
    assert bad.returncode == 6 and "finished while others shuffle" in bad.stderr


def test_seq_clip_matches_lsq_module():
    assert sources.SEQ_CLIP == lsq.SEQ_CLIP


@pytest.fixture
def use_fused(harness, monkeypatch):
    """use_fused(True): pretend a GPU backend is active, the C++ build of the bodies being the
    'GPU'; use_fused(False): the pure-MLX path."""
    calls: list = []
    standins.install(monkeypatch, **standins.harness_launches(harness, calls))

    def switch(on: bool) -> None:
        backend.set_kernels_enabled(on)  # install() restores the switch afterwards

    switch.calls = calls
    return switch


def _fwd_vjp(fn, primals, cot):
    out, grads = mx.vjp(fn, primals, [cot])
    mx.eval(out, grads)
    return out[0], grads


@pytest.mark.parametrize("per", ("row", "group"))
def test_quantizers_call_fused_kernels(use_fused, per):
    # The dispatch in quant/lsq.py, learned_affine.py and quantizers.py, end to end:
    # same ŵ and ∂w bit for bit, parameter gradients up to summation order.
    from mlx_qat.quant.quantizers import _minmax_rounded

    w32, alpha = lsq_case(4, 64, per, seed=1)
    w = w32.astype(mx.bfloat16)
    cot = mx.random.normal(w.shape, key=mx.random.key(9)).astype(mx.bfloat16)
    _, scale, bias = learned_case(4, 64, seed=2)
    cases = [
        (lsq.lsq_function(4, 64, mx.float16), [w, alpha]),
        (lsq.lsq_function(2, 64), [w, alpha]),
        (learned_affine.learned_affine_function(4, 64), [w, scale, bias]),
    ]
    for fn, primals in cases:
        use_fused(True)
        out_k, grads_k = _fwd_vjp(fn, primals, cot)
        use_fused(False)
        out_r, grads_r = _fwd_vjp(fn, primals, cot)
        assert mismatches(out_k, out_r) == 0
        assert mismatches(grads_k[0], grads_r[0]) == 0
        for gk, gr in zip(grads_k[1:], grads_r[1:]):
            _close(gk, gr)
    fq = _minmax_rounded(4, 64, mx.float16)
    use_fused(True)
    got = fq(w)
    use_fused(False)
    assert mismatches(got, fq(w)) == 0
    assert len(use_fused.calls) == 2 * len(cases) + 1  # every forward/backward went to the kernel


@pytest.mark.parametrize("backend_name", ("metal", "cuda"))
def test_backend_sources_parse(harness, backend_name, tmp_path):
    # The exact header/body strings MLX receives, in an MLX-shaped kernel with stubbed builtins.
    from kernel_harness import flavours

    assert flavours.syntax_check(backend_name, cpp.compiler(), tmp_path) == ""
