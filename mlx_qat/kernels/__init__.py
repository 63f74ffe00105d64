"""Fused fake-quant kernels for MLX's Metal and CUDA backends: sources and launches only.

A leaf package: it imports nothing from the rest of mlx_qat. It knows how to build the kernel
objects and launch a body on already-prepared inputs; it does not decide which path runs, clamp
learnable parameters or apply gradient rules. All of that is in `mlx_qat.quant`:

    quant/backend.py        which path runs ("metal", "cuda", "cpu", "reference"), the
                            MLX_QAT_KERNELS switch
    quant/fake_quant.py     min/max dispatch: fused kernel, CPU fast path (quant/affine_cpu.py)
                            or the pure-MLX reference
    quant/lsq.py            LSQ/SEQ/sign: α clamp, per-row sums and ParetoQ's g around the
    quant/learned_affine.py   kernels' per-group reductions (and the scale clamp)
    quant/kernel_check.py   the parity checks: the one a user runs (`check_backend`,
                            `format_report`) and the one `prepare` runs on every kernel the
                            run will launch (`self_check`)

Modules here:
    sources.py     ONE body per job (min/max, learned, LSQ/SEQ/sign forward; their backward),
                   compiled as Metal, CUDA and plain C++; layouts and numerics in its docstring
    fp_sources.py  the mxfp4/mxfp8/nvfp4 forward body
    launch.py      launch geometry (grid counts threads; whole SIMD groups; tg ≤ 256)
    gpu.py         the kernel objects (built once, at import) and `forward`, `backward`,
                   `fp_forward`, which launch a body on per-group float32 parameters

Every body produces the project's canonical grid (MLX's CPU `mx.quantize`, quant/affine.py)
bit for bit. The bodies are tested without a GPU through their plain-C++ build
(tests/kernel_harness/), the launches only on a Mac/NVIDIA machine (`metal`/`cuda` tests,
`quant.kernel_check.check_backend`).
"""

from __future__ import annotations

from . import gpu, launch, sources
from .fp_sources import FP_KINDS
from .gpu import cuda_available, metal_available

__all__ = ["FP_KINDS", "cuda_available", "gpu", "launch", "metal_available", "sources"]
