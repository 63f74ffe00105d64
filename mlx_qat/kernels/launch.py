"""Launch geometry for the kernels (pure Python, unit-tested anywhere).

A job runs `threads_per_group` threads per quantization group (sources.threads_per_group): 1
for the backward, the lanes of a SIMD group / warp for the forwards (32, or 16 for nvfp4's
16-element groups). MLX's `grid` counts THREADS, not threadgroups/blocks, on both backends:
    Metal  dispatchThreads(grid, tg): exactly grid threads run; partial threadgroups allowed.
    CUDA   blocks = ceil(grid / tg), block = min(tg, grid): surplus threads run, so every CUDA
           kernel must bounds-check (the bodies' `meta[0]` guards).
With more than one thread per group the grid is rounded up to whole SIMD groups of 32 and the
threadgroup is a multiple of 32, so every warp is complete, holds whole groups, and CUDA's
surplus threads are whole warps (which the forwards' per-warp guard sends home together,
before any shuffle); a rounded-up grid's spare lanes belong to no group.
The threadgroup is kept at ≤ 256 threads: Metal pipelines of register-heavy kernels can
allow fewer than 1024 (MLX raises a ValueError above the pipeline's limit), and 256 is a full
block on every NVIDIA part. The thread index is 32-bit and MLX's grid a C int, so one launch
covers < 2^31 threads (2^26 groups, 2^31–2^33 elements, at 32 threads per group).
"""

from __future__ import annotations

MAX_THREADGROUP = 256
MAX_THREADS = 2**31 - 1
SIMD_WIDTH = 32


def launch_geometry(
    n_groups: int, threads_per_group: int = 1, threadgroup: int = MAX_THREADGROUP
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(grid, threadgroup) for `n_groups` groups of `threads_per_group` threads each, in MLX's
    convention (grid counts threads).

    Raises:
        ValueError: no groups, a `threads_per_group` that is not a power of two ≤ 32, too
            many threads for a 32-bit index, or a threadgroup size out of range or (with more
            than one thread per group) not a multiple of 32.
    """
    if n_groups < 1:
        raise ValueError(f"launch_geometry: need at least one group, got {n_groups}")
    if threads_per_group not in (1, 2, 4, 8, 16, 32):
        raise ValueError(
            f"launch_geometry: threads_per_group={threads_per_group}; use a power of two ≤ 32 "
            "(lanes of one SIMD group)"
        )
    threads = n_groups * threads_per_group
    simd = SIMD_WIDTH if threads_per_group > 1 else 1
    threads = -(-threads // simd) * simd  # whole SIMD groups: all 32 lanes reach the shuffles
    if threads > MAX_THREADS:
        raise ValueError(
            f"launch_geometry: {n_groups} groups × {threads_per_group} threads exceed the 32-bit "
            f"thread index ({MAX_THREADS}); split the tensor"
        )
    if not 1 <= threadgroup <= MAX_THREADGROUP or threadgroup % simd:
        raise ValueError(
            f"launch_geometry: threadgroup={threadgroup} must be in [1, {MAX_THREADGROUP}] and, "
            f"with threads_per_group={threads_per_group}, a multiple of {simd}"
        )
    return (threads, 1, 1), (min(threadgroup, threads), 1, 1)


def threads_launched(grid: tuple[int, int, int], tg: tuple[int, int, int], backend: str) -> int:
    """How many threads MLX actually starts for (grid, tg) on `backend` ("metal" or "cuda")."""
    gx, tx = grid[0], tg[0]
    if backend == "metal":
        return gx
    if backend == "cuda":
        block = min(tx, gx)
        return -(-gx // tx) * block
    raise ValueError(f"threads_launched: unknown backend {backend!r}")
