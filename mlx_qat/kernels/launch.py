"""Launch geometry for the one-thread-per-group kernels (pure Python, unit-tested anywhere).

MLX's `grid` counts THREADS, not threadgroups/blocks, on both backends:
    Metal  dispatchThreads(grid, tg): exactly grid threads run; partial threadgroups allowed.
    CUDA   blocks = ceil(grid / tg), block = min(tg, grid): surplus threads run, so every CUDA
           kernel must bounds-check (our bodies start with `if (qat_tid >= meta[0]) return;`).
The threadgroup is kept at ≤ 256 threads: Metal pipelines of register-heavy kernels can
allow fewer than 1024 (MLX raises a ValueError above the pipeline's limit), and 256 is a full
block on every NVIDIA part. The thread index is 32-bit, so one launch covers < 2^31 groups.
"""

from __future__ import annotations

MAX_THREADGROUP = 256
MAX_GROUPS = 2**31 - 1


def launch_geometry(
    n_groups: int, threadgroup: int = MAX_THREADGROUP
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(grid, threadgroup) for `n_groups` groups, one thread each, in MLX's convention.

    Raises:
        ValueError: no groups, too many for a 32-bit thread index, or a bad threadgroup size.
    """
    if n_groups < 1:
        raise ValueError(f"launch_geometry: need at least one group, got {n_groups}")
    if n_groups > MAX_GROUPS:
        raise ValueError(
            f"launch_geometry: {n_groups} groups exceed the 32-bit thread index "
            f"({MAX_GROUPS}); split the tensor"
        )
    if not 1 <= threadgroup <= MAX_THREADGROUP:
        raise ValueError(f"launch_geometry: threadgroup must be in [1, {MAX_THREADGROUP}]")
    return (n_groups, 1, 1), (min(threadgroup, n_groups), 1, 1)


def threads_launched(grid: tuple[int, int, int], tg: tuple[int, int, int], backend: str) -> int:
    """How many threads MLX actually starts for (grid, tg) on `backend` ("metal" or "cuda")."""
    gx, tx = grid[0], tg[0]
    if backend == "metal":
        return gx
    if backend == "cuda":
        block = min(tx, gx)
        return -(-gx // tx) * block
    raise ValueError(f"threads_launched: unknown backend {backend!r}")
