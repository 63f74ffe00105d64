"""Thin Metal/CUDA wrappers around the shared kernel bodies of `sources.py`.

Kernel objects are built once, at import: `mx.fast.metal_kernel` constructs anywhere (only
calling it needs Metal); `mx.fast.cuda_kernel` raises without CUDA, so it is built only when
`mx.cuda.is_available()`. Each body gets its own kernel name, suffixed with a hash of the
source (MLX < 0.32.1 silently reused the first source compiled under a name). The
dtype/bit-width/group-size/kind variants are MLX template arguments, which MLX turns into
distinct instantiations (Metal templates, CUDA constexprs). Inputs are made row-contiguous by
MLX (`ensure_row_contiguous=True`), so the bodies index flat memory.

Launch: `sources.threads_per_group(job, group_size)` threads per group (the forwards: the lanes
of a SIMD group; the backward: 1), geometry from `launch.py` (grid counts threads, tg ≤ 256).
"""

from __future__ import annotations

import hashlib

import mlx.core as mx

from . import sources
from .launch import launch_geometry


def _name(job: str, body: str) -> str:
    return f"mlx_qat_{job}_{hashlib.sha1(body.encode()).hexdigest()[:10]}"


def _build(factory, source_fn) -> dict:
    out = {}
    for job, (ins, outs) in sources.IO.items():
        header, body = source_fn(job)
        out[job] = factory(
            name=_name(job, header + body),
            input_names=list(ins),
            output_names=list(outs),
            source=body,
            header=header,
        )
    return out


def cuda_available() -> bool:
    """True when this MLX build runs on CUDA (`mx.cuda.is_available()`, absent on old MLX)."""
    cuda = getattr(mx, "cuda", None)
    return bool(cuda is not None and cuda.is_available())


def metal_available() -> bool:
    """True when MLX's Metal backend is available (an Apple GPU)."""
    return bool(mx.metal.is_available())


KERNELS: dict[str, dict] = {}
try:
    KERNELS["metal"] = _build(mx.fast.metal_kernel, sources.metal_source)
except (AttributeError, RuntimeError, ValueError):  # pragma: no cover - very old MLX
    pass
if cuda_available():  # pragma: no cover - needs a CUDA build of MLX
    KERNELS["cuda"] = _build(mx.fast.cuda_kernel, sources.cuda_source)

_DUMMY = mx.zeros((1,), dtype=mx.float32)


def _meta(n_groups: int) -> mx.array:
    return mx.array([n_groups], dtype=mx.int32)


def _launch(job: str, n_groups: int, group_size: int):
    return launch_geometry(n_groups, sources.threads_per_group(job, group_size))


def _per_group(p: mx.array | None, n_groups: int) -> mx.array:
    if p is None:
        return _DUMMY
    return p.astype(mx.float32).reshape(n_groups)


def forward(
    backend: str,
    w: mx.array,
    kind: int,
    bits: int,
    group_size: int,
    p0: mx.array | None = None,
    p1: mx.array | None = None,
    dequant_dtype: mx.Dtype | None = None,
) -> mx.array:
    """ŵ from the fused forward kernel (see sources.py for kinds and the meaning of p0, p1).

    Raises:
        ValueError: `group_size` is not a multiple of 32 (one SIMD group of 32 lanes per group).
    """
    if group_size % sources.LANES:
        raise ValueError(
            f"gpu.forward: group_size={group_size} must be a multiple of {sources.LANES} "
            "(the kernel runs one 32-lane SIMD group per group); affine specs use 32, 64, 128"
        )
    n_groups = w.size // group_size
    grid, tg = _launch("forward", n_groups, group_size)
    (out,) = KERNELS[backend]["forward"](
        inputs=[w, _per_group(p0, n_groups), _per_group(p1, n_groups), _meta(n_groups)],
        template=[
            ("T", w.dtype),
            ("D", dequant_dtype or w.dtype),
            ("BITS", bits),
            ("GS", group_size),
            ("KIND", kind),
        ],
        grid=grid,
        threadgroup=tg,
        output_shapes=[w.shape],
        output_dtypes=[w.dtype],
    )
    return out


def backward(
    backend: str,
    w: mx.array,
    cot: mx.array,
    kind: int,
    bits: int,
    group_size: int,
    p0: mx.array,
    p1: mx.array | None = None,
) -> tuple[mx.array, mx.array]:
    """(dw, red) from the fused backward kernel; red is float32 (groups, 2)."""
    n_groups = w.size // group_size
    grid, tg = _launch("backward", n_groups, group_size)
    dw, red = KERNELS[backend]["backward"](
        inputs=[w, cot, _per_group(p0, n_groups), _per_group(p1, n_groups), _meta(n_groups)],
        template=[
            ("T", w.dtype),
            ("C", cot.dtype),
            ("BITS", bits),
            ("GS", group_size),
            ("KIND", kind),
        ],
        grid=grid,
        threadgroup=tg,
        output_shapes=[w.shape, (n_groups, 2)],
        output_dtypes=[cot.dtype, mx.float32],
    )
    return dw, red


def fp_forward(backend: str, w: mx.array, kind: int, group_size: int) -> mx.array:
    """ŵ from the fused mxfp4/mxfp8/nvfp4 forward kernel (kinds in fp_sources.py)."""
    n_groups = w.size // group_size
    grid, tg = _launch("fp_forward", n_groups, group_size)
    (out,) = KERNELS[backend]["fp_forward"](
        inputs=[w, _meta(n_groups)],
        template=[("T", w.dtype), ("GS", group_size), ("KIND", kind)],
        grid=grid,
        threadgroup=tg,
        output_shapes=[w.shape],
        output_dtypes=[w.dtype],
    )
    return out
