"""quant/kernel_check.py: `check_backend` (the check a user runs) and `self_check` (the check
`prepare` runs on every kernel a run will use), on CPU: with the C++ build of the kernel bodies
standing in for a GPU (tests/kernel_harness), and with broken stand-ins for each job, forward
and backward, that must turn the kernels off with a warning naming the kernel.
"""

from __future__ import annotations

import mlx.core as mx
import pytest
from kernel_harness import cpp, standins

from mlx_qat.kernels import FP_KINDS, gpu, sources
from mlx_qat.quant import QuantSpec, affine_cpu, backend, kernel_check
from mlx_qat.quant.affine import fake_quant_minmax


@pytest.fixture(scope="module")
def harness():
    h = cpp.shared()
    if h is None:
        pytest.skip("no C++ compiler (g++/c++ or $CXX): cannot build the kernel harness")
    return h


# --- the user-facing check on CPU -----------------------------------------------------------


def test_check_backend_on_cpu_checks_the_fast_path(monkeypatch):
    if backend.machine_backend() is not None:
        pytest.skip("this MLX has a GPU backend")
    report = kernel_check.check_backend()
    assert report.backend == "cpu" and len(report.rows) == 108
    assert report.passed and report.exit_code == 0
    assert "no GPU backend" in report.note
    table = kernel_check.format_report(report)
    assert table.splitlines()[-1] == "PASS: 108 of 108 checks passed"
    assert "cpu minmax" in table and "bits=4 g64 bfloat16 2 streams" in table
    with pytest.raises(ValueError, match="cannot run it"):
        kernel_check.check_backend("cuda")
    # A CPU path that stops quantizing is reported, with the size of the disagreement.
    monkeypatch.setattr(affine_cpu, "fake_quant_minmax", lambda w, bits, gs, split: w)
    report = kernel_check.check_backend("cpu")
    assert not report.passed and report.exit_code == 1 and len(report.failures) == 108
    table = kernel_check.format_report(report, failures_only=True)
    assert table.splitlines()[-1] == "FAIL: 0 of 108 checks passed, 108 failed"
    assert "elements" in report.failures[0].describe()
    assert report.failures[0].max_abs_diff > 0


# --- the self-check prepare runs ------------------------------------------------------------


@pytest.fixture
def fresh_self_check(monkeypatch):
    monkeypatch.setattr(kernel_check, "_checked", {})
    return kernel_check


def test_kernel_uses_mirror_the_quantizers():
    a4, a2, nv = QuantSpec("affine", 4, 64), QuantSpec("affine", 2, 32), QuantSpec.for_mode("nvfp4")
    layers = [(a4, mx.bfloat16), (a4, mx.bfloat16), (a4, mx.float16), (nv, mx.bfloat16)]
    uses = kernel_check.kernel_uses("minmax", layers, scale_dtype=mx.float16)
    # Min/max dequantizes in scale_dtype only for affine weights of another dtype.
    assert [(u.spec, u.dtype, u.dequant_dtype) for u in uses] == [
        (a4, mx.bfloat16, mx.float16),
        (a4, mx.float16, None),
        (nv, mx.bfloat16, None),
    ]
    uses = kernel_check.kernel_uses("lsq", [(a2, mx.float32)], None, per="group")
    assert uses == [kernel_check.KernelUse("lsq", a2, mx.float32, None, "group")]
    assert uses[0].describe() == "affine bits=2 g32 float32 per=group"
    uses = kernel_check.kernel_uses("learned_affine", [(a4, mx.float32)], mx.bfloat16, "group")
    assert uses == [kernel_check.KernelUse("learned_affine", a4, mx.float32, mx.bfloat16, "row")]
    with pytest.raises(ValueError, match="needs affine"):
        kernel_check.kernel_uses("lsq", [(nv, mx.float32)])
    with pytest.raises(ValueError, match="unknown quantizer"):
        kernel_check.kernel_uses("gptq", [(a4, mx.float32)])


def test_self_check_without_gpu_checks_nothing(monkeypatch, fresh_self_check):
    if backend.fused_backend() is not None:
        pytest.skip("a GPU backend is active")
    monkeypatch.setattr(gpu, "forward", standins.broken("forward", "raises"))
    assert fresh_self_check.self_check("lsq") is True and not fresh_self_check._checked


SELF_CHECK_CASES = [
    ("minmax", QuantSpec("affine", 4, 64), ("forward minmax ŵ",)),
    ("minmax", QuantSpec.for_mode("nvfp4"), ("fp_forward nvfp4 ŵ",)),
    ("minmax", QuantSpec.for_mode("mxfp8"), ("fp_forward mxfp8 ŵ",)),
    ("lsq", QuantSpec("affine", 2, 32), ("forward lsq ŵ", "backward lsq ∂w", "backward lsq ∂α")),
    (
        "learned_affine",
        QuantSpec("affine", 3, 128),
        ("forward learned_affine ŵ", "backward learned_affine ∂w", "learned_affine ∂scale"),
    ),
]


@pytest.mark.parametrize("failure", ["raises", "wrong"])
@pytest.mark.parametrize("quantizer,spec,named", SELF_CHECK_CASES, ids=lambda x: str(x)[:12])
def test_self_check_falls_back_when_a_gpu_kernel_fails(
    monkeypatch, caplog, fresh_self_check, failure, quantizer, spec, named
):
    """A Metal/CUDA kernel that fails on the user's GPU (any job the run uses) turns the
    kernels off, not training, and the warning names it and the size of the disagreement."""
    broken = {job: standins.broken(job, failure) for job in standins.JOBS}
    standins.install(monkeypatch, **broken)
    assert backend.active_backend() == standins.NAME
    with caplog.at_level("WARNING", logger="mlx_qat.quant.kernel_check"):
        assert fresh_self_check.self_check(quantizer, [(spec, mx.bfloat16)]) is False
    assert not backend.kernels_enabled() and backend.active_backend() == "reference"
    text = caplog.text
    assert "failed its self-check" in text and "MLX_QAT_KERNELS=0" in text
    assert f"bits={spec.bits} g{spec.group_size} bfloat16" in text
    for kernel in named:
        assert kernel in text
    if failure == "raises":
        assert "RuntimeError: " in text and "kernel compile error" in text
    else:
        assert "elements differ (max abs diff" in text
    assert fresh_self_check.self_check(quantizer, [(spec, mx.bfloat16)]) is True  # kernels off


def test_self_check_passes_with_a_correct_kernel(monkeypatch, fresh_self_check):
    """The check itself is sound: a kernel computing the canonical grid passes."""

    def forward(b, w, kind, bits, gs, p0=None, p1=None, dequant_dtype=None):
        assert kind == sources.KIND_MINMAX
        return fake_quant_minmax(w, bits, gs, dequant_dtype)

    standins.install(monkeypatch, forward=forward)
    sc = fresh_self_check
    assert sc.self_check() is True and backend.kernels_enabled()
    assert len(sc._checked) == 2  # affine 4-bit g64 in float32 and bfloat16
    monkeypatch.setattr(gpu, "forward", standins.broken("forward", "raises"))
    assert sc.self_check() is True  # cached per backend and kernel
    layers = [(QuantSpec("affine", 8, 32), mx.float16)]
    assert sc.self_check("minmax", layers, scale_dtype=mx.float32) is False  # a new kernel


def test_prepare_self_checks_the_runs_kernels(monkeypatch, caplog, fresh_self_check):
    # prepare passes its quantizer, every layer's (spec, dtype), scale_dtype and lsq_per.
    from tiny_models import tiny_model

    from mlx_qat import QATConfig, prepare

    standins.install(monkeypatch, **{j: standins.broken(j, "raises") for j in standins.JOBS})
    config = QATConfig.with_bits(2, 32, quantizer="lsq", scale_dtype="float16", lsq_per="group")
    with caplog.at_level("WARNING", logger="mlx_qat.quant.kernel_check"):
        prepare(tiny_model(), config)
    assert not backend.kernels_enabled()
    for spec in ("bits=2 g32", "bits=4 g32"):  # weights and the embeddings/head at 4 bits
        assert f"backward lsq ∂α (affine {spec} float32 dequant float16 per=group)" in caplog.text


# --- with the C++ build as the GPU -------------------------------------------------------------


def test_check_backend_runs_on_the_cpp_build(harness, monkeypatch):
    # kernel_check.check_backend (what the metal/cuda-marked tests and a user's check run on a
    # GPU) end to end, with the C++ build standing in for the GPU: every row must pass.
    standins.install(monkeypatch, **standins.harness_launches(harness))
    report = kernel_check.check_backend(standins.NAME)
    assert len(report.rows) == 156  # the 144 cases of the old gpu_parity, plus LSQ's ∂α
    assert report.passed, kernel_check.format_report(report, failures_only=True)
    reductions = [r for r in report.rows if r.tolerance]
    assert len(reductions) == 3 * (4 + 3 * 2)  # ∂α (4 bit widths), ∂scale and ∂bias (3)
    # Summation order only: far inside the tolerance.
    worst = max(r.max_abs_diff for r in reductions)
    assert 0 < worst and all(r.differ == 0 for r in reductions)


A4, A2 = QuantSpec("affine", 4, 32), QuantSpec("affine", 2, 64)
SELF_CHECK_RUNS = [  # quantizer, layers (spec, weight dtype), the jobs it launches
    ("minmax", [(QuantSpec("affine", 3, 32), mx.float32), (A4, mx.float16)], {"forward"}),
    ("minmax", [(QuantSpec.for_mode(m), mx.bfloat16) for m in FP_KINDS], {"fp_forward"}),
    ("lsq", [(A2, mx.bfloat16), (A4, mx.float32)], {"forward", "backward"}),
    ("learned_affine", [(A2, mx.float16), (A4, mx.float16)], {"forward", "backward"}),
]


@pytest.mark.parametrize("scale_dtype", (None, mx.bfloat16), ids=str)
@pytest.mark.parametrize("quantizer,layers,jobs", SELF_CHECK_RUNS, ids=lambda x: str(x)[:10])
def test_self_check_passes_on_the_cpp_build(
    harness, monkeypatch, quantizer, layers, jobs, scale_dtype
):
    # Every kernel a run uses, forward AND backward, passes when the kernels are right.
    calls: list = []
    standins.install(monkeypatch, **standins.harness_launches(harness, calls))
    monkeypatch.setattr(kernel_check, "_checked", {})
    for per in ("row", "group"):
        assert kernel_check.self_check(quantizer, layers, scale_dtype, per) is True
    assert backend.kernels_enabled() and set(calls) == jobs
    # Once per kernel use (learned_affine's and min/max's ignore `per`): 2 or 4 here.
    uses = {
        u
        for per in ("row", "group")
        for u in kernel_check.kernel_uses(quantizer, layers, scale_dtype, per)
    }
    assert len(kernel_check._checked) == len(uses)
    assert calls.count("backward") == (0 if quantizer == "minmax" else len(uses))


BREAKS = [
    ("minmax", QuantSpec("affine", 4, 64), "forward", "wrong", "forward minmax ŵ"),
    ("minmax", QuantSpec.for_mode("nvfp4"), "fp_forward", "wrong", "fp_forward nvfp4 ŵ"),
    ("lsq", QuantSpec("affine", 4, 64), "forward", "raises", "forward lsq ŵ"),
    ("lsq", QuantSpec("affine", 4, 64), "backward", "wrong_dw", "backward lsq ∂w"),
    ("lsq", QuantSpec("affine", 2, 32), "backward", "wrong_sums", "backward lsq ∂α"),
    ("learned_affine", QuantSpec("affine", 3, 64), "forward", "wrong", "forward learned_affine"),
    ("learned_affine", QuantSpec("affine", 3, 64), "backward", "wrong_dw", "learned_affine ∂w"),
    ("learned_affine", QuantSpec("affine", 3, 64), "backward", "wrong_sums", "∂scale"),
]


@pytest.mark.parametrize("quantizer,spec,job,how,named", BREAKS, ids=lambda x: str(x)[:14])
def test_self_check_names_the_broken_kernel(
    harness, monkeypatch, caplog, quantizer, spec, job, how, named
):
    # One job broken, the others correct (the C++ build): the warning names exactly that
    # kernel, with the count and the max abs diff, and the run falls back to the reference.
    good = standins.harness_launches(harness)
    standins.install(monkeypatch, **{**good, job: standins.broken(job, how, good[job])})
    monkeypatch.setattr(kernel_check, "_checked", {})
    with caplog.at_level("WARNING", logger="mlx_qat.quant.kernel_check"):
        assert kernel_check.self_check(quantizer, [(spec, mx.float32)]) is False
    assert backend.active_backend() == "reference"
    failed = caplog.text.split("reference: ", 1)[1].split(". Using", 1)[0].split("; ")
    assert all(named in f or (how == "wrong_sums" and "∂bias" in f) for f in failed), failed
    assert all(f"bits={spec.bits} g{spec.group_size} float32" in f for f in failed)
    if how == "raises":
        assert "kernel compile error" in failed[0]
    else:
        assert "elements" in failed[0] and "max abs diff" in failed[0]
    if how == "wrong_dw":
        assert "1 of " in failed[0]  # exactly the one element that was changed
    if how == "wrong_sums":
        assert "beyond 1e-05·max|ref|" in failed[0]
