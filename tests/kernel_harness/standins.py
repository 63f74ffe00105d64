"""Stand-ins for mlx_qat.kernels.gpu's launches, so the dispatch and the checks run on a CPU.

`install(monkeypatch, forward=..., backward=..., fp_forward=...)` makes a pretend fused backend
("harness") the active one (while kernels are enabled) and routes its launches to the given
functions, which take gpu.py's signatures. `harness_launches(harness)` gives the C++ build of
the bodies in those signatures (a correct "GPU"); `broken(job, how)` a launch that raises or
returns wrong numbers, for the fallback tests.

One level lower, `harness_kernels(harness)` stands in for the kernel OBJECTS gpu.py builds at
import (`mx.fast.metal_kernel` / `cuda_kernel`): each is called the way MLX's are
(inputs, template, grid, threadgroup, output shapes/dtypes) and launches the C++ build with
exactly those values, CUDA-style (launch.threads_launched, blockDim = threadgroup), so gpu.py's
own launch code runs on a CPU.
"""

from __future__ import annotations

import mlx.core as mx

from mlx_qat.kernels import gpu, sources
from mlx_qat.kernels.launch import threads_launched
from mlx_qat.quant import backend

NAME = "harness"
JOBS = ("forward", "backward", "fp_forward")


def install(monkeypatch, name: str = NAME, **launches) -> None:
    """Pretend `name` is the active fused backend; gpu.<job> = launches[job] for those given."""
    monkeypatch.setattr(backend, "_enabled", True)
    monkeypatch.setattr(
        backend, "fused_backend", lambda: name if backend.kernels_enabled() else None
    )
    monkeypatch.setitem(gpu.KERNELS, name, {})
    for job, fn in launches.items():
        assert job in JOBS, job
        monkeypatch.setattr(gpu, job, fn)


def harness_launches(harness, count: list | None = None) -> dict:
    """{job: launch} running the C++ build; appends the job to `count` on each call."""

    def forward(b, w, kind, bits, gs, p0=None, p1=None, dequant_dtype=None):
        if count is not None:
            count.append("forward")
        return harness.forward(w, kind, bits, gs, p0, p1, dequant_dtype)

    def backward(b, w, cot, kind, bits, gs, p0, p1=None):
        if count is not None:
            count.append("backward")
        return harness.backward(w, cot, kind, bits, gs, p0, p1)

    def fp_forward(b, w, kind, gs):
        if count is not None:
            count.append("fp_forward")
        return harness.fp_forward(w, kind, gs)

    return {"forward": forward, "backward": backward, "fp_forward": fp_forward}


def broken(job: str, how: str, good=None):
    """A launch of `job` that fails: how="raises" (a compile error), "wrong" (w or cot back
    unchanged, zero sums), or, for the backward with a correct `good` launch to start from,
    "wrong_dw" (∂w off by one element) / "wrong_sums" (the per-group sums scaled by 1.01)."""

    def launch(b, w, *args, **kwargs):
        if how == "raises":
            raise RuntimeError(f"{job}: kernel compile error")
        if how == "wrong":
            if job != "backward":
                return w  # not quantized at all
            cot = args[0]
            return cot, mx.zeros((w.size // args[3], 2), mx.float32)
        dw, red = good(b, w, *args, **kwargs)
        if how == "wrong_dw":
            flat = dw.reshape(-1)
            return mx.concatenate([flat[:1] + 1, flat[1:]]).reshape(dw.shape), red
        assert how == "wrong_sums", how
        return dw, red * 1.01

    return launch


class HarnessKernel:
    """A stand-in for one kernel object of gpu.KERNELS[backend][job], with MLX's call
    signature; `calls` counts its launches. It refuses what the real kernel would get wrong
    silently: inputs out of sources.IO order, a template T that is not the weight's dtype,
    outputs of another shape or dtype than the body writes."""

    def __init__(self, harness, job: str):
        self.harness, self.job, self.calls = harness, job, 0

    def __call__(self, *, inputs, template, grid, threadgroup, output_shapes, output_dtypes):
        self.calls += 1
        t = dict(template)
        names = sources.IO[self.job][0]
        assert len(inputs) == len(names), (self.job, len(inputs), names)
        args = dict(zip(names, inputs))
        w = args["w"]
        assert t["T"] == w.dtype, f"{self.job}: template T={t['T']} but w is {w.dtype}"
        assert args["meta"].tolist() == [w.size // t["GS"]], "meta[0] must be the group count"
        launch = {
            "n_threads": threads_launched(grid, threadgroup, "cuda"),
            "block_dim": min(threadgroup[0], grid[0]),
        }
        h, p0, p1 = self.harness, args.get("p0"), args.get("p1")
        if self.job == "forward":
            kind, bits, gs, d = t["KIND"], t["BITS"], t["GS"], t["D"]
            outs = [h.forward(w, kind, bits, gs, p0, p1, dequant_dtype=d, **launch)]
        elif self.job == "backward":
            cot, kind, bits, gs = args["cot"], t["KIND"], t["BITS"], t["GS"]
            assert t["C"] == cot.dtype, "template C must be the cotangent's dtype"
            outs = list(h.backward(w, cot, kind, bits, gs, p0, p1, **launch))
        else:
            outs = [h.fp_forward(w, t["KIND"], t["GS"], **launch)]
        assert [tuple(o.shape) for o in outs] == [tuple(s) for s in output_shapes], self.job
        assert [o.dtype for o in outs] == list(output_dtypes), self.job
        return outs


def harness_kernels(harness) -> dict[str, HarnessKernel]:
    """{job: HarnessKernel} for every job: what gpu.KERNELS[backend] holds, on the C++ build."""
    return {job: HarnessKernel(harness, job) for job in JOBS}
