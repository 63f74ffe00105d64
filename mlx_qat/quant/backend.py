"""Which fake-quant path runs: the fused GPU kernels, the CPU fast path, or the reference.

    path         when                                                     what runs
    "metal"      default device is the GPU and `mx.metal.is_available()`  fused kernels
    "cuda"       default device is the GPU and `mx.cuda.is_available()`   fused kernels
    "cpu"        otherwise (MLX on CPU)                                   affine_cpu.py (min/max,
                                                                          learned affine's fixed
                                                                          codes), reference (the
                                                                          rest)
    "reference"  kernels disabled (`MLX_QAT_KERNELS=0` in the environment,
                 `set_kernels_enabled(False)`, or a failed self-check)     pure-MLX reference

Every path gives the canonical grid (affine.py, fp.py) bit for bit and the same gradients (the
per-group scale/bias sums up to float32 summation order). The quantizers ask inside their
`mx.custom_function`s (built here: `dispatched_function`, `straight_through`), so a compiled
step keeps the path it was traced with; they hand the kernels prepared float32 per-group
parameters (clamps, per-row sums and gradient scales stay in lsq.py and learned_affine.py).
"""

from __future__ import annotations

import os

import mlx.core as mx

from ..kernels import gpu

FUSED = ("metal", "cuda")
_OFF = ("0", "false", "off", "no")
_enabled = os.environ.get("MLX_QAT_KERNELS", "1").strip().lower() not in _OFF


def set_kernels_enabled(enabled: bool) -> None:
    """Turn the fused kernels and the CPU fast path on or off (off: pure-MLX reference)."""
    global _enabled
    _enabled = bool(enabled)


def kernels_enabled() -> bool:
    """Whether the kernels / CPU fast path may be used (see `set_kernels_enabled`)."""
    return _enabled


def machine_backend() -> str | None:
    """The fused backend this machine's MLX can launch, whatever the device and the switch."""
    if gpu.metal_available() and "metal" in gpu.KERNELS:
        return "metal"
    if gpu.cuda_available() and "cuda" in gpu.KERNELS:
        return "cuda"
    return None


def fused_backend() -> str | None:
    """ "metal" or "cuda" when the fused kernels run now (GPU default device, kernels on)."""
    if not _enabled or mx.default_device() != mx.gpu:
        return None
    return machine_backend()


def active_backend() -> str:
    """The path min/max fake-quant takes now: "metal", "cuda", "cpu" or "reference"."""
    fused = fused_backend()
    if fused:
        return fused
    if _enabled and mx.default_device() == mx.cpu:
        return "cpu"
    return "reference"


def dispatch(fused, reference, *args):
    """`fused(*args, on=...)` when a fused backend is active, else `reference(*args)`."""
    on = fused_backend()
    return fused(*args, on=on) if on else reference(*args)


def dispatched_function(paths, bits: int, group_size: int, scale_dtype=None):
    """custom_function (w, *params) -> ŵ from `paths` = (fused forward, reference forward, fused
    backward, reference backward): forward(w, *params, bits, group_size, scale_dtype) and
    backward(w, *params, cot, bits, group_size) -> one gradient per primal, each `dispatch`ed."""
    fused_forward, reference_forward, fused_backward, reference_backward = paths

    @mx.custom_function
    def fq(*primals):
        args = (*primals, bits, group_size, scale_dtype)
        return dispatch(fused_forward, reference_forward, *args)

    @fq.vjp
    def fq_vjp(primals, cot, output):
        return dispatch(fused_backward, reference_backward, *primals, cot, bits, group_size)

    return fq


def straight_through(forward):
    """custom_function w -> forward(w) whose gradient passes the cotangent through (STE)."""

    @mx.custom_function
    def fq(w):
        return forward(w)

    @fq.vjp
    def fq_vjp(primals, cot, output):
        return cot

    return fq


def require_fused(on: str | None = None) -> str:
    """`on` if given, else the active fused backend (RuntimeError if none)."""
    if on is not None:
        return on
    b = fused_backend()
    if b is None:
        raise RuntimeError(
            "mlx_qat: no fused backend is active (needs the GPU as default device with Metal or "
            "CUDA, and kernels enabled); call the pure-MLX reference instead"
        )
    return b


def per_group(p: mx.array, w: mx.array, group_size: int) -> mx.array:
    """float32 (n_groups,) view of a parameter shaped (..., 1) per row or (..., G) per group of
    `w` (..., K), G = K / group_size: the layout the kernels read."""
    groups = (*w.shape[:-1], w.shape[-1] // group_size)
    return mx.broadcast_to(p.astype(mx.float32), groups).reshape(-1)
