"""Fast pure-MLX min/max fake-quant for MLX's CPU backend, bit-identical to the reference.

Math: quant/affine.py (float32 group statistics, true division, rint, dequantisation in the
weight dtype). Three rewrites make it faster without changing a single bit:

1. Statistics by a pairwise tree: the first levels are elementwise `maximum`/`minimum` of the
   two halves of every group (vectorised binary ops), only the last few elements go through
   a reduction. MLX's CPU `max(axis=-1)` over 32–128 contiguous elements runs a scalar loop.
   max/min are exact, so any association order gives the same bits (NaN still propagates).
2. Rounding by the float32 magic constant M = 1.5·2^23: for 0 ≤ y ≤ 255, (y + M) − M is y
   rounded half-to-even, exactly `rint`, in two vectorised adds instead of MLX's scalar `round`.
   The upper clip is applied first (rint(min(y, n)) = min(rint(y), n) since n is an integer).
   The lower clip is dropped: y = (w − b)/s ≥ −½ always holds for the min/max grid (b is the
   group's extreme with code 0, or b = 0 when |edge/s| ≤ ½), and a code of −0 instead of +0
   yields the same ŵ because b is then either the (nonzero) edge or +0.
3. Two CPU streams: MLX runs each CPU stream's ops on its own thread, single-threaded, so the
   groups are split into two halves evaluated on two streams (both cores), then concatenated.

For 16-bit weights the dequantisation ŵ = T(code)·T(s) + T(b) is kept in T, as the reference.
NaN/inf inputs are not covered by the bit-exactness tests (NaN groups stay NaN).
"""

from __future__ import annotations

import mlx.core as mx

MAGIC = 12582912.0  # 1.5 * 2**23: float32 x + MAGIC rounds x to an integer, ties to even
SPLIT_MIN_ELEMENTS = 1 << 20  # below this, one stream (the sync costs more than it saves)
TREE_LEVELS = 2  # pairwise levels before the reduction (measured: benchmarks/bench_fake_quant)

_streams: list = []


def _worker_streams() -> list:
    if not _streams:
        _streams.extend(mx.new_stream(mx.cpu) for _ in range(2))
    return _streams


def group_stats(xg: mx.array, levels: int = TREE_LEVELS) -> tuple[mx.array, mx.array]:
    """(max, min) over the last axis of float32 `xg`, keepdims, via `levels` pairwise steps."""
    hi = lo = xg
    h = xg.shape[-1]
    for _ in range(levels):
        if h % 2:
            break
        h //= 2
        hi = mx.maximum(hi[..., :h], hi[..., h:])
        lo = mx.minimum(lo[..., :h], lo[..., h:])
    return hi.max(axis=-1, keepdims=True), lo.min(axis=-1, keepdims=True)


def minmax_grid(w_max: mx.array, w_min: mx.array, bits: int) -> tuple[mx.array, mx.array]:
    """MLX's (scale, bias) from group extremes; the same ops as affine.minmax_params."""
    n = float(2**bits - 1)
    side = mx.abs(w_min) > mx.abs(w_max)
    s = mx.maximum((w_max - w_min) / n, 1e-7)
    s = mx.where(side, s, -s)
    edge = mx.where(side, w_min, w_max)
    q0 = mx.round(edge / s)
    nonzero = q0 != 0
    return mx.where(nonzero, edge / q0, s), mx.where(nonzero, edge, 0.0)


def _groups(xg: mx.array, bits: int, levels: int) -> mx.array:
    """Fake-quant of (groups, group_size) `xg` in its dtype."""
    dt = xg.dtype
    x = xg if dt == mx.float32 else xg.astype(mx.float32)
    s, b = minmax_grid(*group_stats(x, levels), bits)
    y = mx.minimum((x - b) / s, float(2**bits - 1))
    code = (y + MAGIC) - MAGIC
    if dt == mx.float32:
        return code * s + b
    return code.astype(dt) * s.astype(dt) + b.astype(dt)


def fake_quant_minmax(
    w: mx.array,
    bits: int,
    group_size: int,
    split: bool | None = None,
    levels: int = TREE_LEVELS,
) -> mx.array:
    """Quantize-dequantize `w` on the min/max grid; equals affine.fake_quant_minmax bit for bit.

    Args:
        w: float array (..., K), K a multiple of `group_size`.
        bits, group_size: the affine format.
        split: evaluate the two halves of the groups on two CPU streams (default: when
            w has at least SPLIT_MIN_ELEMENTS elements).
        levels: pairwise max/min levels before the reduction.
    """
    xg = w.reshape(-1, group_size)
    n_groups = xg.shape[0]
    if split is None:
        split = w.size >= SPLIT_MIN_ELEMENTS
    if not split or n_groups < 2:
        return _groups(xg, bits, levels).reshape(w.shape)
    h = n_groups // 2
    s0, s1 = _worker_streams()
    with mx.stream(s0):
        a = _groups(xg[:h], bits, levels)
    with mx.stream(s1):
        b = _groups(xg[h:], bits, levels)
    return mx.concatenate([a, b], axis=0).reshape(w.shape)
