"""Fused fake-quant kernels for MLX's Metal and CUDA backends: sources and launches only.

A leaf package (it imports nothing from the rest of mlx_qat): it builds the kernel objects and
launches a body on prepared inputs. Which path runs, parameter clamps, gradient rules and the
parity checks live in `mlx_qat.quant` (backend.py, fake_quant.py, lsq.py, learned_affine.py,
kernel_check.py).

Modules: sources.py (ONE body per job, compiled as Metal, CUDA and plain C++; layouts and
numerics in its docstring), fp_sources.py (the mxfp4/mxfp8/nvfp4 forward body), launch.py
(launch geometry), gpu.py (the kernel objects, built at import, and `forward`, `backward`,
`fp_forward`).

Every body produces the canonical grid (MLX's CPU `mx.quantize`, quant/affine.py) bit for bit.
The bodies are tested without a GPU through their plain-C++ build (tests/kernel_harness/), the
launches only on a Mac/NVIDIA machine (`quant.kernel_check.check_backend`).
"""

from __future__ import annotations

from . import gpu, launch, sources
from .fp_sources import FP_KINDS
from .gpu import cuda_available, metal_available

__all__ = ["FP_KINDS", "cuda_available", "gpu", "launch", "metal_available", "sources"]
