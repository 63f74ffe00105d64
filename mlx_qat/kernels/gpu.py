"""Thin Metal/CUDA wrappers around the shared kernel bodies of `sources.py`.

Kernel objects are built once, at import (a Metal kernel object constructs anywhere; CUDA's
only when `mx.cuda.is_available()`: `mx.fast.cuda_kernel` raises without). Each body's kernel
name carries a hash of its source (MLX < 0.32.1 silently reused the first source compiled under
a name). dtype, bits, group size and kind are MLX template arguments; inputs are made
row-contiguous by MLX, so the bodies index flat memory. Launch geometry: `launch.py`.
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
    """True when this MLX build runs on CUDA (`mx.cuda` is absent on old MLX)."""
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


def _per_group(p: mx.array | None, n_groups: int) -> mx.array:
    return _DUMMY if p is None else p.astype(mx.float32).reshape(n_groups)


def _run(backend: str, job: str, group_size: int, inputs: list, template: list, outputs: list):
    """Launch `job` on the groups of `inputs[0]` (meta appended); `outputs`: (shape, dtype)s."""
    n_groups = inputs[0].size // group_size
    grid, tg = launch_geometry(n_groups, sources.threads_per_group(job, group_size))
    return KERNELS[backend][job](
        inputs=[*inputs, mx.array([n_groups], dtype=mx.int32)],
        template=template,
        grid=grid,
        threadgroup=tg,
        output_shapes=[s for s, _ in outputs],
        output_dtypes=[d for _, d in outputs],
    )


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
    n = w.size // group_size
    d = dequant_dtype or w.dtype
    template = [("T", w.dtype), ("D", d), ("BITS", bits), ("GS", group_size), ("KIND", kind)]
    inputs = [w, _per_group(p0, n), _per_group(p1, n)]
    return _run(backend, "forward", group_size, inputs, template, [(w.shape, w.dtype)])[0]


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
    n = w.size // group_size
    template = [
        ("T", w.dtype),
        ("C", cot.dtype),
        ("BITS", bits),
        ("GS", group_size),
        ("KIND", kind),
    ]
    inputs = [w, cot, _per_group(p0, n), _per_group(p1, n)]
    outputs = [(w.shape, cot.dtype), ((n, 2), mx.float32)]
    dw, red = _run(backend, "backward", group_size, inputs, template, outputs)
    return dw, red


def fp_forward(backend: str, w: mx.array, kind: int, group_size: int) -> mx.array:
    """ŵ from the fused mxfp4/mxfp8/nvfp4 forward kernel (kinds in fp_sources.py)."""
    template = [("T", w.dtype), ("GS", group_size), ("KIND", kind)]
    return _run(backend, "fp_forward", group_size, [w], template, [(w.shape, w.dtype)])[0]
