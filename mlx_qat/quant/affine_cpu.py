"""Fast pure-MLX affine fake-quant for MLX's CPU backend, bit-identical to the reference.

The "cpu" path of backend.py: another formulation of affine.py's `fake_quant_minmax` (same
math, grid rules from `params_from_extremes`) and of learned_affine.py's fixed-code mode
(`anchored_*`: codes on a frozen anchor grid, valued by the learned one; rewrites 2 and 4).
Four rewrites make them faster without changing a single bit:

1. Statistics by a pairwise tree: elementwise `maximum`/`minimum` of the two halves of every
   group (vectorised), a reduction only over the last few elements (MLX's CPU `max(axis=-1)`
   over 32–128 contiguous elements runs a scalar loop). max/min are exact, so any association
   order gives the same bits (NaN still propagates).
2. Rounding by the float32 magic constant M = 1.5·2^23: for 0 ≤ y ≤ 255, (y + M) − M is
   rint(y), in two vectorised adds. The upper clip comes first (rint(min(y, n)) =
   min(rint(y), n), n an integer). The lower clip is dropped: y = (w − b)/s ≥ −½ always holds
   on the min/max grid, and a code of −0 gives the same ŵ (b is then the nonzero edge or +0).
3. Two CPU streams (each runs single-threaded): the groups split in halves evaluated on both
   cores, then concatenated. Off by default: see `split_by_default`.
4. Compiled == eager: `apply_grid` keeps `mx.compile` from fusing these ops into scalar
   strided JIT loops (2–3x slower than eager).

For 16-bit weights ŵ = T(code)·T(s) + T(b) keeps T's two roundings: the product is exact in
float32 and rounded once to T, the sum in T. NaN/inf inputs are not covered by the
bit-exactness tests (NaN groups stay NaN).
"""

from __future__ import annotations

import os

import mlx.core as mx

from .affine import params_from_extremes

MAGIC = 12582912.0  # 1.5 * 2**23: float32 x + MAGIC rounds x to an integer, ties to even
SPLIT_MIN_ELEMENTS = 1 << 20  # below this, one stream (the sync costs more than it saves)
REDUCE_AT = 16  # pairwise levels stop here: measured best for group sizes 32/64/128
# MLX_QAT_CPU_STREAMS=2 turns the split on. It only pays with an idle second core (with the
# other core busy it costs +12% wall time: benchmarks/results/fake_quant.md).
_STREAMS = os.environ.get("MLX_QAT_CPU_STREAMS", "1").strip()


def split_by_default() -> bool:
    """Whether `fake_quant_minmax` splits large tensors over two streams when not told."""
    return _STREAMS == "2"


_streams: list = []


def _worker_streams() -> list:  # two compute streams, one for broadcast views
    if not _streams:
        _streams.extend(mx.new_stream(mx.cpu) for _ in range(3))
    return _streams


def tree_levels(group_size: int) -> int:
    """Pairwise max/min levels for `group_size` (down to REDUCE_AT elements)."""
    levels = 0
    while group_size > REDUCE_AT and group_size % 2 == 0:
        group_size //= 2
        levels += 1
    return levels


def group_stats(xg: mx.array, levels: int | None = None) -> tuple[mx.array, mx.array]:
    """(max, min) over the last axis of float32 `xg`, keepdims (`levels`: `tree_levels`)."""
    if levels is None:
        levels = tree_levels(xg.shape[-1])
    hi = lo = xg
    h = xg.shape[-1]
    for _ in range(levels):
        if h % 2:
            break
        h //= 2
        hi = mx.maximum(hi[..., :h], hi[..., h:])
        lo = mx.minimum(lo[..., :h], lo[..., h:])
    return hi.max(axis=-1, keepdims=True), lo.min(axis=-1, keepdims=True)


minmax_grid = params_from_extremes  # the canonical rules, once per group


def _groups(xg: mx.array, bits: int, levels: int | None) -> mx.array:
    """Fake-quant of (groups, group_size) `xg` in its dtype (the caller reshapes)."""
    x = xg if xg.dtype == mx.float32 else xg.astype(mx.float32)
    s, b = minmax_grid(*group_stats(x, levels), bits)
    return apply_grid(x, s, b, bits, xg.dtype)


def _staged(g: int, gs: int):
    """(full, flip) for staging elementwise ops on (g, gs) float32 arrays so that `mx.compile`
    cannot fuse them into a scalar JIT loop: it would fuse a binary op with the Broadcast of its
    per-group operand (and pull the per-group arithmetic into the per-element loop). Fusion
    stops at a stream change (the broadcasts run on another stream) and at a reshape (every op
    reads the previous result as (g, gs) or (g, 1, gs))."""
    view = _worker_streams()[2]
    a2, a3 = (g, gs), (g, 1, gs)

    def full(p: mx.array, ndim: int) -> mx.array:
        shape = a3 if ndim == 3 else a2
        return mx.broadcast_to(p.reshape(*shape[:-1], 1), shape, stream=view)

    def flip(a: mx.array) -> mx.array:
        return a.reshape(a3) if a.ndim == 2 else a.reshape(a2)

    return full, flip


def apply_grid(x: mx.array, s: mx.array, b: mx.array, bits: int, dtype: mx.Dtype) -> mx.array:
    """ŵ in `dtype` for float32 (groups, gs) `x` on the grid (s, b), each (groups, 1) float32:
    7 elementwise passes (8 for 16-bit dtypes), no rounding op, no clip at 0."""
    full, flip = _staged(*x.shape)
    y = flip(x) - full(b, 3)
    y = flip(y) / full(s, 2)
    y = mx.minimum(flip(y), float(2**bits - 1))
    y = flip(y) + MAGIC
    code = flip(y) - MAGIC  # (g, 1, gs)
    if dtype == mx.float32:
        return flip(flip(code) * full(s, 2)) + full(b, 3)
    # T(code)·T(s) in float32 is exact (≤ 8 + 11 significant bits), so one rounding to T gives
    # T's product, and float32 ops are ~2x faster than MLX's 16-bit ones on CPU.
    s_t = s.astype(dtype).astype(mx.float32)
    prod = flip(flip(code) * full(s_t, 2)).astype(dtype)  # (g, 1, gs)
    return flip(prod) + full(b.astype(dtype), 2)


def anchored_codes(x: mx.array, s0: mx.array, b0: mx.array, bits: int):
    """(u, code), both (g, gs) float32, for float32 (g, gs) `x` read on the anchor grid
    (s0, b0), each (g,) float32 with s0 already clamped: u = (x − b0)/s0 and
    code = clip(rint(u), 0, n), bit for bit learned_affine.codes' (rint(clip(u)) = clip(rint(u))
    as 0 and n are integers; the lower clip is kept, trained weights leave the anchor grid)."""
    full, flip = _staged(*x.shape)
    u = flip(flip(x) - full(b0, 3)) / full(s0, 2)
    c = mx.maximum(flip(u), 0.0)
    c = mx.minimum(flip(c), float(2**bits - 1))
    c = flip(c) + MAGIC
    return u, flip(c) - MAGIC


def anchored_forward(x, s0, b0, s, b, bits: int) -> mx.array:
    """float32 ŵ = code·s + b (g, gs) of the anchor grid's codes valued by the learned (s, b),
    each (g,) float32 (s clamped): learned_affine.anchored_forward for float32 weights."""
    full, flip = _staged(*x.shape)
    _, code = anchored_codes(x, s0, b0, bits)
    return flip(flip(code * full(s, 2)) + full(b, 3))


def anchored_backward(x, cot, s0, b0, ratio, bits: int):
    """(∂L/∂x (g, gs), ∂L/∂s (g,), ∂L/∂b (g,)) of `anchored_forward` for the float32 (g, gs)
    cotangent `cot`, with ratio = s/s0 per group: learned_affine.anchored_backward's values
    and summation order (a zero of ∂L/∂x outside the grid may be −0: the reference's `where`
    costs ~9 multiplies on MLX's CPU backend, the mask is multiplied instead)."""
    full, flip = _staged(*x.shape)
    u, code = anchored_codes(x, s0, b0, bits)
    inside = (u >= 0) & (u <= float(2**bits - 1))
    dx = flip(flip(cot) * full(ratio, 3)) * inside
    return dx, (cot * code).sum(axis=-1), cot.sum(axis=-1)


def fake_quant_minmax(
    w: mx.array,
    bits: int,
    group_size: int,
    split: bool | None = None,
    levels: int | None = None,
) -> mx.array:
    """Quantize-dequantize `w` on the min/max grid; equals affine.fake_quant_minmax bit for bit.

    Args:
        split: evaluate the two halves of the groups on two CPU streams (default: when w has
            at least SPLIT_MIN_ELEMENTS elements and `split_by_default()`); same bits either way.
        levels: pairwise max/min levels before the reduction (default `tree_levels`).
    """
    xg = w.reshape(-1, group_size)
    n_groups = xg.shape[0]
    if split is None:
        split = w.size >= SPLIT_MIN_ELEMENTS and split_by_default()
    if not split or n_groups < 2:
        return _groups(xg, bits, levels).reshape(w.shape)
    h = n_groups // 2
    s0, s1 = _worker_streams()[:2]
    with mx.stream(s0):
        a = _groups(xg[:h], bits, levels)
    with mx.stream(s1):
        b = _groups(xg[h:], bits, levels)
    return mx.concatenate([a, b], axis=0).reshape(w.shape)
