"""Integer codes of a quantizer's grid, and where each weight sits between transition points.

What the transition-rate statistics and TRS count (`mlx_qat.train.transitions`, `train/trs.py`;
paper 001, Lee et al., arXiv 2404.19248): a weight *transitions* when its integer code changes,
i.e. when its position u on the grid crosses a *transition point*. Codes are computed as each
quantizer's forward rounds (same functions, float32, rint), so a transition is a change of the
deployed integer:

    min/max affine   (s, b) = the group's min/max grid (affine.py)   u = (w − b)/s
                     code = clip(rint(u), 0, n),  n = 2^bits − 1
    learned affine   (s, b) learned (or the anchor grid (s₀, b₀)     u = (w − b)/s
                     with scale_grad="fixed_codes"), same code rule
    LSQ, 3–8 bit     x = w/α (lsq.py)                                u = x − Qn
                     code = clip(rint(x), Qn, Qp) − Qn,  Qn = −2^(b−1), Qp = 2^(b−1) − 1
    SEQ, 2 bit       y = 2·clip(x, −0.99, 0.99) − ½                  u = y + 2
                     code = rint(y) + 2 ∈ {0, 1, 2, 3}
    sign, 1 bit      code = sign(x) (levels ±α)                      u = (x + 1)/2
    mxfp4 / nvfp4 / mxfp8 (fp.py): x = the element over its group's scale, before rounding;
                     code = its FP4 / FP8 code (FP8's −0 counted as +0); u = |x|'s position on
                     the ladder of non-negative levels, linear between adjacent levels (FP4: 0,
                     ½, 1, 1½, 2, 3, 4, 6; FP8 e4m3: 2^(e−7)·(1 + m/8) and the subnormals
                     m·2^−9), so the midpoint between two levels is at a half-integer u.

The codes lie at the integers lo..hi of u (0..n, 0..3, 0..1, 0..7 or 0..126 for fp) and the
transition points at the half-integers, so the distance to the nearest one, in grid steps, is

    d = |frac(u) − ½|        (0: on a transition point; ½: on a level),

exact for lo ≤ u ≤ hi; weights outside (clipped) are left out of the mean. For fp formats a
grid step is the local level spacing (d is relative). A min/max code can also change because
the group's range moved, a learnable one because the scale moved; both count, as in the
paper's definition (TRS freezes learnable scales so that only weight moves change codes).
"""

from __future__ import annotations

import mlx.core as mx

from . import affine_cpu, backend, learned_affine, lsq
from .affine import codes_from_params, group, params_from_extremes
from .fp import FP4_LEVELS, _fp4_codes, fp_scaled_elements
from .quantizers import LearnedAffineQuantizer, LSQQuantizer, MinMaxQuantizer, Quantizer

FP8_TOP = 126.0  # u of e4m3's largest finite value 448 = 2^8 · 1.75: 8·15 + 6


def quantizer_params(quantizer: Quantizer) -> dict[str, mx.array]:
    """The quantizer's grid parameters (LSQ `alpha`, learned affine `scale`/`bias` the codes
    are read on; none for min/max), to take codes on the grid as it was before an update."""
    if isinstance(quantizer, LSQQuantizer):
        return {"alpha": quantizer["alpha"]}
    if isinstance(quantizer, LearnedAffineQuantizer):
        scale, bias = quantizer.code_grid()
        return {"scale": scale, "bias": bias}
    return {}


def _fp_position(x: mx.array, mode: str) -> mx.array:
    """u = the magnitude's piecewise-linear index on the fp level ladder (float32)."""
    m = mx.abs(x.astype(mx.float32))
    if mode == "mxfp8":
        # e4m3: subnormals m·2^-9 below 2^-6, then 8 levels per binade from exponent field 1
        e = mx.floor(mx.log2(mx.maximum(m, 2.0**-6)))
        normal = 8.0 * (e + 7.0) + 8.0 * (m / mx.power(2.0, e) - 1.0)
        return mx.minimum(mx.where(m < 2.0**-6, m * 512.0, normal), FP8_TOP)
    u = mx.zeros_like(m)
    for lo, hi in zip(FP4_LEVELS[:-1], FP4_LEVELS[1:]):
        u = u + mx.clip((m - lo) / (hi - lo), 0.0, 1.0)
    return u


def code_position(
    quantizer: Quantizer, w: mx.array, params: dict[str, mx.array] | None = None
) -> tuple[mx.array, mx.array, float, float]:
    """(code, u, lo, hi) of weight `w` under `quantizer` (the formulas in the header).

    `params` (from `quantizer_params`) replaces the quantizer's current grid parameters. code
    and u are grouped (..., K/group_size, group_size): code float32 integers (uint32 for the fp
    modes), u float32 positions, valid in [lo, hi].
    """
    p = quantizer_params(quantizer) if params is None else params
    gs = quantizer.spec.group_size
    if isinstance(quantizer, LSQQuantizer):
        wg = group(w, gs).astype(mx.float32)
        code, _, _, x, q = lsq.codes(wg, p["alpha"], quantizer.bits)
        if quantizer.bits == 1:
            return q, (x + 1.0) * 0.5, 0.0, 1.0
        if quantizer.bits == 2:
            return code, mx.clip(x, -lsq.SEQ_CLIP, lsq.SEQ_CLIP) * 2.0 + 1.5, 0.0, 3.0
        qn, _ = lsq.qrange(quantizer.bits)
        return code, x - qn, 0.0, float(2**quantizer.bits - 1)
    if isinstance(quantizer, LearnedAffineQuantizer):
        wg, bits = group(w, gs).astype(mx.float32), quantizer.spec.bits
        if backend.active_backend() == "cpu":  # the same bits, faster compiled (affine_cpu.py)
            s, b = (a.astype(mx.float32).reshape(-1) for a in (p["scale"], p["bias"]))
            grid = (learned_affine.clamp_scale(s), b)
            x, code = affine_cpu.anchored_codes(wg.reshape(-1, gs), *grid, bits)
            return code.reshape(wg.shape), x.reshape(wg.shape), 0.0, float(2**bits - 1)
        code, _, _, x = learned_affine.codes(wg, p["scale"], p["bias"], bits)
        return code, x, 0.0, float(2**bits - 1)
    if not isinstance(quantizer, MinMaxQuantizer):
        raise TypeError(f"code_position: no code rule for quantizer {type(quantizer).__name__}")
    spec = quantizer.spec
    if spec.is_affine:
        wg = group(w, gs).astype(mx.float32)
        s, b = params_from_extremes(*affine_cpu.group_stats(wg), spec.bits)
        return codes_from_params(wg, s, b, spec.bits), (wg - b) / s, 0.0, float(2**spec.bits - 1)
    x, _ = fp_scaled_elements(w, spec.mode, gs)
    # the forward's own roundings (FP4: ties to the lower level; FP8: to_fp8)
    if spec.mode == "mxfp8":
        code = mx.to_fp8(x).astype(mx.uint32)
        code = mx.where(code == 128, 0, code)  # −0 and +0 are one value
        top = FP8_TOP
    else:
        code, top = _fp4_codes(x), float(len(FP4_LEVELS) - 1)
    return code, _fp_position(x, spec.mode), 0.0, top


def transition_distance(u: mx.array, lo: float, hi: float) -> tuple[mx.array, mx.array]:
    """(Σ d, count) over the weights with lo ≤ u ≤ hi, d = |frac(u) − ½| (float32 scalars)."""
    inside = (u >= lo) & (u <= hi)
    d = mx.abs(u - mx.floor(u) - 0.5)
    # d ≥ 0, so d·[inside] is where(inside, d, 0) (NaN aside) at a tenth of its CPU cost
    return (d * inside).sum(), inside.astype(mx.float32).sum()
