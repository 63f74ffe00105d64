"""Kernel dispatch (quant/backend.py), the kernels package's shape (a leaf), launch geometry,
and the CPU fast path's bit-exactness.

The GPU parity tests (`metal`/`cuda` markers) run `quant.kernel_check.check_backend`, the fused
kernels against the CPU reference, and are skipped where MLX has no such backend. The checks
themselves are tested in test_kernels_check.py, the kernel bodies in test_kernels_cpp.py.
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
from kernel_harness import cpp

from mlx_qat.kernels import gpu, sources
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
from mlx_qat.quant.fake_quant import fake_quant_forward
from mlx_qat.quant.kernel_cases import minmax_families, mismatches, stacked
from mlx_qat.quant.spec import AFFINE_BITS, AFFINE_GROUP_SIZES

DTYPES = (mx.float32, mx.float16, mx.bfloat16)


@pytest.fixture
def kernels_off():
    was = backend.kernels_enabled()
    backend.set_kernels_enabled(False)
    yield
    backend.set_kernels_enabled(was)


# --- dispatch -------------------------------------------------------------------------------


def test_cpu_picks_pure_mlx_path():
    if mx.default_device() != mx.cpu:
        pytest.skip("default device is a GPU")
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


# --- kernel objects and launch geometry (pure Python) ---------------------------------------


def test_kernel_objects_built_once_per_backend():
    assert set(gpu.KERNELS.get("metal", {})) == {"forward", "backward", "fp_forward"}
    assert ("cuda" in gpu.KERNELS) == gpu.cuda_available()
    names = {gpu._name(j, "".join(sources.metal_source(j))) for j in sources.BODIES}
    assert len(names) == 3  # one name per source variant
    assert gpu._name("forward", "a") != gpu._name("forward", "b")


def test_one_body_text_for_all_backends():
    harness = cpp.harness_source()
    for job, body in sources.BODIES.items():
        metal_header, metal_body = sources.metal_source(job)
        cuda_header, cuda_body = sources.cuda_source(job)
        assert metal_body.endswith(body) and cuda_body.endswith(body) and body in harness
        assert sources.COMMON in metal_header and sources.COMMON in cuda_header
        # MLX adds Metal attributes it finds in the body; CUDA must bounds-check.
        assert "thread_position_in_grid" in metal_body
        assert "blockIdx.x * blockDim.x + threadIdx.x" in cuda_body
        assert "meta[0]" in body and ") return;" in body  # the guard, first thing
    assert "__fmul_rn" in sources.CUDA_PRELUDE and "fp contract(off)" in sources.METAL_PRELUDE
    # The lane reduction is shared; only the shuffle differs per backend.
    assert "__shfl_xor_sync(0xffffffffu" in sources.CUDA_PRELUDE
    assert "simd_shuffle_xor" in sources.METAL_PRELUDE
    assert "qat_lanes_max(hi, QAT_LANES)" in sources.FORWARD_BODY
    assert "qat_lanes_max(amax, qat_width)" in sources.FP_FORWARD_BODY


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


# --- the CPU fast path ----------------------------------------------------------------------


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


@pytest.mark.parametrize("shape", ((1, 64), (1, 128), (3, 5, 256), (2, 1, 3, 64), (1024, 1024)))
def test_cpu_path_shapes(shape):
    w = mx.random.normal(shape, key=mx.random.key(len(shape))) * 0.02
    for split in (False, True, None):
        got = affine_cpu.fake_quant_minmax(w, 4, 64, split=split)
        assert got.shape == w.shape
        assert mismatches(got, fake_quant_minmax(w, 4, 64)) == 0


def test_cpu_path_compiled_and_grad():
    spec = QuantSpec("affine", 3, 32)
    w = stacked(minmax_families(3, 32, seed=5), mx.bfloat16)
    ref = reference_fake_quant(w, spec)
    assert mismatches(mx.compile(lambda x: fake_quantize(x, spec))(w), ref) == 0
    grad = mx.compile(mx.grad(lambda x: (fake_quantize(x, spec).astype(mx.float32) * 3).sum()))
    assert np.array_equal(np.array(grad(w).astype(mx.float32)), np.full(w.shape, 3.0))


def test_cpu_path_nan_group_stays_nan():
    w = mx.random.normal((2, 128), key=mx.random.key(3))
    w = mx.where(mx.arange(256).reshape(2, 128) == 5, float("nan"), w)
    got = np.array(affine_cpu.fake_quant_minmax(w, 4, 64, split=True))
    ref = np.array(fake_quant_minmax(w, 4, 64))
    assert np.isnan(got[0, :64]).all() and np.isnan(ref[0, :64]).all()
    np.testing.assert_array_equal(got[:, 64:], ref[:, 64:])
    np.testing.assert_array_equal(got[1], ref[1])


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
