"""Stand-ins for mlx_qat.kernels.gpu's launches, so the dispatch and the checks run on a CPU.

`install(monkeypatch, forward=..., backward=..., fp_forward=...)` makes a pretend fused backend
("harness") the active one (while kernels are enabled) and routes its launches to the given
functions, which take gpu.py's signatures. `harness_launches(harness)` gives the C++ build of
the bodies in those signatures (a correct "GPU"); `broken(job, how)` a launch that raises or
returns wrong numbers, for the fallback tests.
"""

from __future__ import annotations

import mlx.core as mx

from mlx_qat.kernels import gpu
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
