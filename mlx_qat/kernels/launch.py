"""Launch geometry for the kernels (pure Python, unit-tested anywhere).

A job runs `sources.threads_per_group` threads per quantization group: 1 for the backward, the
lanes of a SIMD group / warp for the forwards (32, or 16 for nvfp4). MLX's `grid` counts
THREADS on both backends:
    Metal  dispatchThreads(grid, tg): exactly grid threads run; partial threadgroups allowed.
    CUDA   blocks = ceil(grid / tg), block = min(tg, grid): surplus threads run, so every CUDA
           kernel must bounds-check (the bodies' `meta[0]` guards).
With more than one thread per group the grid is rounded up to whole SIMD groups of 32 and the
threadgroup is a multiple of 32: every warp is complete and CUDA's surplus threads are whole
warps, which the forwards' per-warp guard sends home before any shuffle. Threadgroups stay
≤ 256 (register-heavy Metal pipelines may allow fewer than 1024; 256 is a full NVIDIA block).
The thread index is 32-bit, so one launch covers < 2^31 threads.
"""

from __future__ import annotations

MAX_THREADGROUP = 256
MAX_THREADS = 2**31 - 1
SIMD_WIDTH = 32


def launch_geometry(
    n_groups: int, threads_per_group: int = 1, threadgroup: int = MAX_THREADGROUP
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(grid, threadgroup) for `n_groups` groups of `threads_per_group` threads each (MLX's
    convention: grid counts threads); ValueError for a launch the rules above forbid."""
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
