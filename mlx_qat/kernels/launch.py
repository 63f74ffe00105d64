"""Launch geometry for the kernels (pure Python, unit-tested anywhere).

A job runs `threads_per_group` threads per quantization group (sources.THREADS_PER_GROUP): 1
for the one-thread-per-group bodies, 32 (one SIMD group / warp) for the forward. MLX's `grid`
counts THREADS, not threadgroups/blocks, on both backends:
    Metal  dispatchThreads(grid, tg): exactly grid threads run; partial threadgroups allowed.
    CUDA   blocks = ceil(grid / tg), block = min(tg, grid): surplus threads run, so every CUDA
           kernel must bounds-check (the bodies' `meta[0]` guards).
With 32 threads per group the grid and the threadgroup are multiples of 32, so every warp and
SIMD group holds exactly one group's 32 lanes and CUDA's surplus threads are whole warps (which
the forward's per-group guard sends home together, before any shuffle).
The threadgroup is kept at ≤ 256 threads: Metal pipelines of register-heavy kernels can
allow fewer than 1024 (MLX raises a ValueError above the pipeline's limit), and 256 is a full
block on every NVIDIA part. The thread index is 32-bit and MLX's grid a C int, so one launch
covers < 2^31 threads (2^26 groups, 2^31–2^33 elements, at 32 threads per group).
"""

from __future__ import annotations

MAX_THREADGROUP = 256
MAX_THREADS = 2**31 - 1


def launch_geometry(
    n_groups: int, threads_per_group: int = 1, threadgroup: int = MAX_THREADGROUP
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(grid, threadgroup) for `n_groups` groups of `threads_per_group` threads each, in MLX's
    convention (grid counts threads).

    Raises:
        ValueError: no groups, too many threads for a 32-bit index, or a threadgroup size that
            is out of range or not a multiple of `threads_per_group`.
    """
    if n_groups < 1:
        raise ValueError(f"launch_geometry: need at least one group, got {n_groups}")
    if threads_per_group not in (1, 32):
        raise ValueError(
            f"launch_geometry: threads_per_group={threads_per_group}; use 1 or 32 (a SIMD group)"
        )
    threads = n_groups * threads_per_group
    if threads > MAX_THREADS:
        raise ValueError(
            f"launch_geometry: {n_groups} groups × {threads_per_group} threads exceed the 32-bit "
            f"thread index ({MAX_THREADS}); split the tensor"
        )
    if not 1 <= threadgroup <= MAX_THREADGROUP or threadgroup % threads_per_group:
        raise ValueError(
            f"launch_geometry: threadgroup={threadgroup} must be in [1, {MAX_THREADGROUP}] and a "
            f"multiple of threads_per_group={threads_per_group}"
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
