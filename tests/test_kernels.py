"""Kernel dispatch (quant/backend.py), the kernels package's shape (a leaf), launch geometry,
and the CPU fast path's bit-exactness.

The GPU parity tests (`metal`/`cuda` markers) run `quant.kernel_check.check_backend`, the fused
kernels against the CPU reference, and are skipped where MLX has no such backend. The checks
themselves are tested in test_kernels_check.py, the kernel bodies in test_kernels_cpp.py; the
exact Metal/CUDA source strings and gpu.py's launches, on the C++ build, here.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from kernel_harness import cpp, standins

from mlx_qat.kernels import FP_KINDS, gpu, sources
from mlx_qat.kernels.launch import MAX_THREADGROUP, launch_geometry, threads_launched
from mlx_qat.quant import (
    QuantSpec,
    affine_cpu,
    backend,
    fake_quantize,
    kernel_check,
    learned_affine,
    lsq,
    reference_fake_quant,
)
from mlx_qat.quant.affine import fake_quant_minmax
from mlx_qat.quant.fake_quant import fake_quant_forward, fused_fake_quant
from mlx_qat.quant.kernel_cases import (
    fp_families,
    learned_case,
    lsq_case,
    minmax_families,
    mismatches,
    stacked,
)
from mlx_qat.quant.spec import AFFINE_BITS, AFFINE_GROUP_SIZES

DTYPES = (mx.float32, mx.float16, mx.bfloat16)


@pytest.fixture
def kernels_off():
    was = backend.kernels_enabled()
    backend.set_kernels_enabled(False)
    yield
    backend.set_kernels_enabled(was)


# --- dispatch -------------------------------------------------------------------------------


@pytest.mark.cpu_only
def test_cpu_picks_pure_mlx_path():
    assert backend.fused_backend() is None
    assert backend.active_backend() == "cpu"


def test_switch_forces_reference(kernels_off):
    assert backend.active_backend() == "reference"
    assert backend.fused_backend() is None
    w = mx.random.normal((8, 128))
    spec = QuantSpec("affine", 4, 64)
    assert mismatches(fake_quant_forward(w, spec), reference_fake_quant(w, spec)) == 0


def test_env_var_disables_and_import_needs_no_gpu():
    code = (
        "import mlx_qat, mlx_qat.kernels as k, mlx_qat.quant as q, mlx.core as mx;"
        "from mlx_qat.quant import backend as b;"
        "w = mx.ones((2, 64));"
        "q.fake_quantize(w, q.QuantSpec('affine', 4, 64));"
        "print(b.kernels_enabled(), b.active_backend(), sorted(k.gpu.KERNELS))"
    )
    env = dict(os.environ, MLX_QAT_KERNELS="0")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[:2] == ["False", "reference"]


def test_fused_entry_points_refuse_without_gpu():
    if backend.fused_backend() is not None:
        pytest.skip("a GPU backend is active")
    w = mx.ones((2, 64))
    with pytest.raises(RuntimeError, match="no fused backend"):
        lsq.fused_forward(w, mx.ones((2, 1)), 4, 64)
    with pytest.raises(RuntimeError, match="no fused backend"):
        learned_affine.fused_backward(w, mx.ones((2, 1)), mx.zeros((2, 1)), w, 4, 64)


def test_kernels_package_is_a_leaf():
    # mlx_qat.kernels imports only mlx, numpy, the standard library and itself: the dispatch,
    # clamps and gradient rules live in mlx_qat.quant, which calls it.
    pkg = Path(__file__).resolve().parents[1] / "mlx_qat" / "kernels"
    for path in sorted(pkg.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1, (path.name, node.module)
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            for n in names:
                ok = n.split(".")[0] in ("mlx", "numpy", "__future__", "hashlib")
                assert ok or n.startswith("mlx_qat.kernels"), (path.name, n)


@pytest.mark.parametrize("mode", ("mxfp4", "nvfp4", "mxfp8"))
def test_fp_modes_use_reference(mode):
    spec = QuantSpec.for_mode(mode)
    w = mx.random.normal((4, 64), key=mx.random.key(1)).astype(mx.bfloat16)
    assert mismatches(fake_quant_forward(w, spec), reference_fake_quant(w, spec)) == 0


# --- the exact Metal/CUDA sources, and gpu.py's launches, on the C++ build ----------------


@pytest.fixture(scope="module", params=("metal", "cuda"))
def backend_build(request):
    """The C++ build of the exact (header, body) strings gpu.py gives `metal` / `cuda`."""
    h = cpp.shared(request.param)
    if h is None:
        pytest.skip("no C++ compiler (g++/c++ or $CXX): cannot build the kernel harness")
    return h


def _close(got: mx.array, want: mx.array) -> None:
    a, b = np.array(got.astype(mx.float32)), np.array(want.astype(mx.float32))
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * (np.abs(b).max() + 1e-30))


def test_backend_sources_compute_the_reference(backend_build):
    """The strings MLX compiles (backend prelude, thread index line, shared helpers, body),
    built as C++ with each builtin given its documented semantics (kernel_harness/cpp.py) and
    launched CUDA-style (surplus threads, many blocks): forwards and ∂w equal the pure-MLX
    reference bit for bit, the per-group sums up to float32 summation order. The plain build
    (test_kernels_cpp.py) uses its own prelude, so only this catches a wrong backend word
    (QAT_RINT, QAT_DIV, the shuffle, the thread index)."""
    h = backend_build

    def launch(job, w, gs):  # what a CUDA launch of gpu.py's geometry starts
        grid, tg = launch_geometry(w.size // gs, sources.threads_per_group(job, gs))
        return {"n_threads": threads_launched(grid, tg, "cuda"), "block_dim": tg[0]}

    for dtype in DTYPES:
        for bits, gs in ((2, 32), (3, 64), (4, 128), (8, 64)):  # 40 rows of 384: 16-60 blocks
            w = stacked(minmax_families(bits, gs, seed=bits * gs), dtype)
            got = h.forward(w, sources.KIND_MINMAX, bits, gs, **launch("forward", w, gs))
            assert mismatches(got, fake_quant_minmax(w, bits, gs)) == 0, (dtype, bits, gs)
        for mode in ("mxfp4", "mxfp8", "nvfp4"):
            spec = QuantSpec.for_mode(mode)
            w = stacked(fp_families(seed=12), dtype)
            fp_launch = launch("fp_forward", w, spec.group_size)
            got = h.fp_forward(w, FP_KINDS[mode], spec.group_size, **fp_launch)
            assert mismatches(got, reference_fake_quant(w, spec)) == 0, (dtype, mode)

    gs = 64
    for bits in (1, 2, 4):  # sign, SEQ, LSQ; 48 rows: 288 groups, two backward blocks
        w32, alpha = lsq_case(bits, gs, "group", seed=bits, rows=48)
        cot32 = mx.random.normal(w32.shape, key=mx.random.key(bits))
        for dtype, sd in ((mx.float32, None), (mx.bfloat16, mx.float16)):
            w, cot, kind = w32.astype(dtype), cot32.astype(dtype), lsq.kernel_kind(bits)
            a = backend.per_group(lsq.clamp_alpha(alpha), w, gs)
            got = h.forward(w, kind, bits, gs, p0=a, dequant_dtype=sd, **launch("forward", w, gs))
            assert mismatches(got, lsq.lsq_function(bits, gs, sd)(w, alpha)) == 0, (bits, dtype)
            _, (dw_ref, da_ref) = mx.vjp(lsq.lsq_function(bits, gs), [w, alpha], [cot])
            dw, red = h.backward(w, cot, kind, bits, gs, a, **launch("backward", w, gs))
            assert mismatches(dw, dw_ref) == 0, (bits, dtype)
            _close(red[:, 0].reshape(da_ref.shape) * lsq.grad_scale(w.size, bits), da_ref)
    w, scale, bias = learned_case(3, gs, seed=4, rows=48)
    cot = mx.random.normal(w.shape, key=mx.random.key(5))
    s, b = learned_affine._kernel_params(w, scale, bias, gs)
    got = h.forward(w, sources.KIND_LEARNED, 3, gs, s, b, **launch("forward", w, gs))
    fn = learned_affine.learned_affine_function(3, gs)
    assert mismatches(got, fn(w, scale, bias)) == 0
    _, (dw_ref, ds_ref, db_ref) = mx.vjp(fn, [w, scale, bias], [cot])
    dw, red = h.backward(w, cot, sources.KIND_LEARNED, 3, gs, s, b, **launch("backward", w, gs))
    assert mismatches(dw, dw_ref) == 0
    _close(red[:, 0].reshape(ds_ref.shape), ds_ref)
    _close(red[:, 1].reshape(db_ref.shape), db_ref)


def test_launches_reuse_the_kernel_objects_built_at_import(backend_build, monkeypatch):
    """gpu.py builds one kernel object per job at import; every launch, whatever its dtypes,
    bits, group size or kind (MLX template arguments), goes through that object. Here the
    objects are stand-ins with MLX's call signature running the C++ build (standins.py), and
    building a new one fails: each job's object serves all its launches, and gpu.py's launch
    code (inputs, template, grid, outputs) gives the reference's numbers."""
    kernels = standins.harness_kernels(backend_build)
    standins.install(monkeypatch)
    monkeypatch.setitem(gpu.KERNELS, standins.NAME, kernels)

    def rebuilt(**kwargs):
        raise AssertionError(f"kernel {kwargs.get('name')} built after import")

    monkeypatch.setattr(mx.fast, "metal_kernel", rebuilt)
    monkeypatch.setattr(mx.fast, "cuda_kernel", rebuilt)
    on = standins.NAME
    for dtype in DTYPES:
        for bits, gs in ((4, 64), (3, 32), (8, 128)):
            w = stacked(minmax_families(bits, gs, seed=bits), dtype)
            spec = QuantSpec("affine", bits, gs)
            assert mismatches(fused_fake_quant(w, spec, on=on), fake_quant_minmax(w, bits, gs)) == 0
        w = stacked(fp_families(seed=3), dtype)
        spec = QuantSpec.for_mode("nvfp4")
        assert mismatches(fused_fake_quant(w, spec, on=on), reference_fake_quant(w, spec)) == 0
    w, alpha = lsq_case(4, 64, "row", seed=1)
    cot = mx.random.normal(w.shape, key=mx.random.key(2))
    fused = lsq.lsq_function(4, 64)(w, alpha)  # the switch is on: the stand-in kernels
    _, (dw, _) = mx.vjp(lsq.lsq_function(4, 64), [w, alpha], [cot])
    # forward: 9 min/max + LSQ's (alone, and under the vjp); backward: 1; fp_forward: 3.
    assert [k.calls for k in kernels.values()] == [11, 1, 3]
    backend.set_kernels_enabled(False)  # the reference, for comparison
    assert mismatches(fused, lsq.lsq_function(4, 64)(w, alpha)) == 0
    assert mismatches(dw, mx.vjp(lsq.lsq_function(4, 64), [w, alpha], [cot])[1][0]) == 0
    # A changed body would get a new kernel name (MLX < 0.32.1 reused a name's first source).
    names = {}
    for src in (sources.metal_source, lambda j: (sources.metal_source(j)[0], "//\n")):
        gpu._build(lambda **k: names.setdefault(k["name"], k["source"]), src)
    assert len(names) == 2 * len(sources.BODIES)


@pytest.mark.parametrize("group_size", (16, 48))
def test_forward_needs_whole_simd_groups(group_size):
    with pytest.raises(ValueError, match="multiple of 32"):
        gpu.forward("metal", mx.ones((2, 96)), sources.KIND_MINMAX, 4, group_size)


@pytest.mark.parametrize("per", (1, 16, 32))
@pytest.mark.parametrize("n", (1, 3, 7, 8, 9, 255, 256, 257, 4096 * 64, 10**7 + 1))
def test_launch_geometry(n, per):
    grid, tg = launch_geometry(n, per)
    simd = 1 if per == 1 else 32
    threads = -(-n * per // simd) * simd  # whole SIMD groups
    assert grid == (threads, 1, 1)  # grid counts threads, `per` per group
    assert n * per <= threads < n * per + simd
    assert 1 <= tg[0] <= MAX_THREADGROUP and tg[1:] == (1, 1)
    assert tg[0] % simd == 0  # SIMD groups never straddle a threadgroup / CUDA block
    assert threads_launched(grid, tg, "metal") == threads
    cuda = threads_launched(grid, tg, "cuda")
    assert threads <= cuda < threads + tg[0]  # surplus threads exist: the guard is needed
    assert cuda % tg[0] == 0 and cuda % simd == 0  # surplus: whole warps


def test_threads_per_group():
    tpg = sources.threads_per_group
    assert [tpg("forward", g) for g in (32, 64, 128)] == [32, 32, 32]
    assert [tpg("fp_forward", g) for g in (16, 32)] == [16, 32]
    assert tpg("backward", 64) == 1
    assert cpp.threads_for("forward", 5, 64) == 160
    assert cpp.threads_for("fp_forward", 5, 16) == 96  # 80 lanes, rounded to 3 SIMD groups


def test_launch_geometry_limits():
    with pytest.raises(ValueError):
        launch_geometry(0)
    with pytest.raises(ValueError, match="32-bit"):
        launch_geometry(2**31)
    with pytest.raises(ValueError, match="32-bit"):
        launch_geometry(2**26, 32)
    launch_geometry(2**26 - 1, 32)
    for bad in (0, MAX_THREADGROUP + 1, 1024):
        with pytest.raises(ValueError):
            launch_geometry(10, threadgroup=bad)
    for bad in (16, 48, 100):
        with pytest.raises(ValueError, match="multiple"):
            launch_geometry(10, 32, threadgroup=bad)
    for bad in (3, 24, 64):
        with pytest.raises(ValueError, match="threads_per_group"):
            launch_geometry(10, bad)
    with pytest.raises(ValueError):
        threads_launched((1, 1, 1), (1, 1, 1), "vulkan")


# --- the CPU fast path (cpu_only: on a GPU default device fake_quantize takes the kernels) ----


@pytest.mark.cpu_only
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpu_path_bit_exact(dtype):
    for bits in AFFINE_BITS:
        for gs in AFFINE_GROUP_SIZES:
            w = stacked(minmax_families(bits, gs, seed=100 + bits * gs), dtype)
            ref = fake_quant_minmax(w, bits, gs)
            for split in (False, True):
                for levels in (0, None, 7):
                    got = affine_cpu.fake_quant_minmax(w, bits, gs, split=split, levels=levels)
                    assert mismatches(got, ref) == 0, (bits, gs, split, levels)
            spec = QuantSpec("affine", bits, gs)
            assert mismatches(fake_quantize(w, spec), ref) == 0


@pytest.mark.cpu_only
@pytest.mark.parametrize("shape", ((1, 64), (1, 128), (3, 5, 256), (2, 1, 3, 64), (1024, 1024)))
def test_cpu_path_shapes(shape):
    w = mx.random.normal(shape, key=mx.random.key(len(shape))) * 0.02
    for split in (False, True, None):
        got = affine_cpu.fake_quant_minmax(w, 4, 64, split=split)
        assert got.shape == w.shape
        assert mismatches(got, fake_quant_minmax(w, 4, 64)) == 0


@pytest.mark.cpu_only
def test_cpu_path_compiled_and_grad():
    spec = QuantSpec("affine", 3, 32)
    w = stacked(minmax_families(3, 32, seed=5), mx.bfloat16)
    ref = reference_fake_quant(w, spec)
    assert mismatches(mx.compile(lambda x: fake_quantize(x, spec))(w), ref) == 0
    grad = mx.compile(mx.grad(lambda x: (fake_quantize(x, spec).astype(mx.float32) * 3).sum()))
    assert np.array_equal(np.array(grad(w).astype(mx.float32)), np.full(w.shape, 3.0))


@pytest.mark.cpu_only
def test_cpu_path_nan_group_stays_nan():
    w = mx.random.normal((2, 128), key=mx.random.key(3))
    w = mx.where(mx.arange(256).reshape(2, 128) == 5, float("nan"), w)
    got = np.array(affine_cpu.fake_quant_minmax(w, 4, 64, split=True))
    ref = np.array(fake_quant_minmax(w, 4, 64))
    assert np.isnan(got[0, :64]).all() and np.isnan(ref[0, :64]).all()
    np.testing.assert_array_equal(got[:, 64:], ref[:, 64:])
    np.testing.assert_array_equal(got[1], ref[1])


def _fixed_code_case(shape, bits, gs, seed):
    """(w, scale, bias, anchor_scale, anchor_bias, cot): anchors from the initial weights, the
    weights trained off them (codes clipped at both ends), learned scales scaled, some negative
    and some below the clamp."""
    key = mx.random.split(mx.random.key(seed), 4)
    w0 = mx.random.normal(shape, key=key[0]) * 0.02
    s0, b0 = learned_affine.init_params(w0, bits, gs)
    w = w0 + mx.random.normal(shape, key=key[1]) * 0.01
    # group 0 on a power-of-two anchor grid: codes -2 .. n+2 exactly, both clip edges hit
    n, step = 2**bits - 1, 2.0**-8
    edge = (mx.arange(gs) % (n + 5) - 2).astype(mx.float32) * step
    w = mx.concatenate([edge, w.reshape(-1)[gs:]]).reshape(shape)
    s0 = mx.concatenate([mx.array([step]), s0.reshape(-1)[1:]]).reshape(s0.shape)
    b0 = mx.concatenate([mx.array([0.0]), b0.reshape(-1)[1:]]).reshape(b0.shape)
    f = mx.random.uniform(-0.5, 2.0, s0.shape, key=key[2])
    scale = mx.where(f.abs() < 0.05, 1e-9, s0 * f)
    return w, scale, b0 + 1e-3 * f, s0, b0, mx.random.normal(shape, key=key[3])


@pytest.mark.cpu_only
def test_cpu_path_fixed_codes_bit_exact(monkeypatch):
    """learned_affine's fixed-code mode on the CPU takes affine_cpu.anchored_*: forward, ∂s and
    ∂b bit for bit the reference's (anchored_forward / anchored_backward), ∂w the same values
    (+0 or −0 outside the grid), eager and compiled; bfloat16 weights or scales keep the
    reference."""
    taken = []
    cpu = affine_cpu.anchored_backward
    monkeypatch.setattr(affine_cpu, "anchored_backward", lambda *a: taken.append(1) or cpu(*a))
    for bits in AFFINE_BITS:
        for gs in AFFINE_GROUP_SIZES:
            for shape in ((6, 4 * gs), (2, 3, 2 * gs)):
                primals = list(_fixed_code_case(shape, bits, gs, seed=bits * gs + len(shape)))
                cot = primals.pop()
                want = [learned_affine.anchored_forward(*primals, bits, gs)]
                want += learned_affine.anchored_backward(*primals, cot, bits, gs)
                fq = learned_affine.anchored_function(bits, gs)
                for run in (fq, mx.compile(fq)):
                    out, grads = mx.vjp(run, primals, [cot])
                    for got, ref in zip([*out, *grads[:3]], want, strict=True):
                        if got is grads[0]:  # ∂w: the same values (a zero's sign may differ)
                            got, ref = np.array(got), np.array(ref)
                            assert np.array_equal(got, ref), (bits, gs, shape)
                        else:
                            assert mismatches(got, ref) == 0, (bits, gs, shape)
    assert taken, "the CPU path was not taken"
    taken.clear()
    w, s, b, s0, b0, cot = _fixed_code_case((4, 64), 4, 64, seed=1)
    w16 = w.astype(mx.bfloat16)
    mx.vjp(learned_affine.anchored_function(4, 64), [w16, s, b, s0, b0], [cot.astype(w16.dtype)])
    mx.vjp(learned_affine.anchored_function(4, 64, mx.bfloat16), [w, s, b, s0, b0], [cot])
    assert not taken


# --- GPU parity (Apple / NVIDIA machines only) ----------------------------------------------


def _parity(name: str) -> None:
    report = kernel_check.check_backend(name)
    assert report.backend == name and len(report.rows) == 156
    # Forwards and ∂w bit for bit, the reductions within 1e-5·max|ref| (was 1e-4).
    assert report.passed, kernel_check.format_report(report, failures_only=True)


@pytest.mark.metal
@pytest.mark.skipif(not gpu.metal_available(), reason="needs MLX's Metal backend (a Mac)")
def test_metal_kernels_match_cpu_reference():
    _parity("metal")


@pytest.mark.cuda
@pytest.mark.skipif(not gpu.cuda_available(), reason="needs MLX's CUDA backend")
def test_cuda_kernels_match_cpu_reference():
    _parity("cuda")


def test_tree_levels_and_stream_switch():
    assert [affine_cpu.tree_levels(g) for g in (16, 32, 64, 128)] == [0, 1, 2, 3]
    code = "import mlx_qat.quant.affine_cpu as c; print(c.split_by_default())"
    for value, expected in ((None, "False"), ("1", "False"), ("2", "True")):
        env = {k: v for k, v in os.environ.items() if k != "MLX_QAT_CPU_STREAMS"}
        if value is not None:
            env["MLX_QAT_CPU_STREAMS"] = value
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == expected
