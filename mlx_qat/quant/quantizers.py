"""Quantizer modules: what a QAT layer calls on its float weight.

Each quantizer is an `nn.Module` (so learnable parameters train, save and load with the model)
with one contract:

    q(w)          -> ŵ, w's shape and dtype, with the quantizer's gradient rule
    q.init_from(w)   re-initialise learnable parameters from the current weights (at the switch)
    q.grid(w)     -> Grid(wq, scales, biases): exactly the grid the forward used, MLX layout
    q.export_spec -> the MLX format the grid is in (LSQ/SEQ deploy as affine)

The math of each lives in its numerics module: `fake_quant.py` (min/max), `lsq.py`
(LSQ/SEQ/sign), `learned_affine.py`.
"""

from __future__ import annotations

from functools import cache

import mlx.core as mx
import mlx.nn as nn

from . import backend, learned_affine, lsq
from .affine import fake_quant_minmax, group, minmax_params, pack_codes
from .fake_quant import Grid, fake_quantize, fused_fake_quant, quantize_grid
from .spec import QuantSpec

QUANTIZERS = ("minmax", "lsq", "learned_affine")


class Quantizer(nn.Module):
    """Base class. `scale_dtype`: the dtype scales/biases are stored in at export; the forward
    dequantizes as MLX will with such scales, so the deployed weights equal the trained ones."""

    kind = "base"

    def __init__(self, spec: QuantSpec, scale_dtype: mx.Dtype | None = None):
        super().__init__()
        self.spec = spec
        self.scale_dtype = scale_dtype

    @property
    def export_spec(self) -> QuantSpec:
        return self.spec

    def init_from(self, w: mx.array) -> None:  # noqa: B027 - optional hook
        """Re-initialise learnable parameters from `w` (no-op for min/max)."""

    def lookup(self, w: mx.array, ids: mx.array) -> mx.array:
        """ŵ[ids]: the rows `ids` of an embedding table `w`, fake-quantized (subclasses
        quantize only the rows looked up where that gives the same values)."""
        return self(w)[ids]

    def _storage(self, w: mx.array) -> mx.Dtype:
        return w.dtype if self.scale_dtype is None else self.scale_dtype

    def _rounds_scales(self, w: mx.array) -> bool:
        # mx.Dtype cannot be compared with None, hence the explicit check.
        return self.scale_dtype is not None and self.scale_dtype != w.dtype

    def _extra_repr(self) -> str:
        return f"{self.kind}, {self.spec}"


@cache
def _minmax_rounded(bits: int, group_size: int, scale_dtype: mx.Dtype):
    # Min/max grid whose scale/bias are stored in another dtype than the weight: STE forward.
    spec = QuantSpec("affine", bits, group_size)

    def forward(w):
        on = backend.fused_backend()
        if on:  # mlx_qat.kernels: same bits, one fused pass
            return fused_fake_quant(w, spec, scale_dtype, on)
        return fake_quant_minmax(w, bits, group_size, scale_dtype)

    return backend.straight_through(forward)


class MinMaxQuantizer(Quantizer):
    """MLX's own round-to-nearest grid from each group's min/max, straight-through gradient."""

    kind = "minmax"

    def __call__(self, w: mx.array) -> mx.array:
        if not (self.spec.is_affine and self._rounds_scales(w)):
            return fake_quantize(w, self.spec)
        return _minmax_rounded(self.spec.bits, self.spec.group_size, self.scale_dtype)(w)

    def lookup(self, w: mx.array, ids: mx.array) -> mx.array:
        rows = w[ids]
        # Groups lie along rows and min/max has no per-row state: quantizing only the looked-up
        # rows gives the same values (and STE gradient) at a fraction of the cost.
        return self(rows) if rows.ndim >= 2 else self(w)[ids]

    def grid(self, w: mx.array) -> Grid:
        g = quantize_grid(w, self.spec)
        if not (self.spec.is_affine and self._rounds_scales(w)):
            return g
        wg = group(w, self.spec.group_size).astype(mx.float32)
        s, b = minmax_params(wg, self.spec.bits)
        sd = self.scale_dtype
        return Grid(g.wq, s.squeeze(-1).astype(sd), b.squeeze(-1).astype(sd))


class LSQQuantizer(Quantizer):
    """ParetoQ's symmetric learnable-step quantizer: LSQ (3–8 bit), SEQ (2 bit), sign (1 bit,
    research only: no MLX export), one α per output row (`per="row"`, ParetoQ) or per group;
    `group_size` is the exported affine grid's."""

    kind = "lsq"

    def __init__(self, bits: int, group_size: int, shape, per: str = "row", scale_dtype=None):
        if bits not in (1, 2, *lsq.LSQ_BITS):
            raise ValueError(f"lsq(bits={bits}): supports bits 1 (sign), 2 (SEQ), 3, 4, 5, 6, 8")
        if per not in ("row", "group"):
            raise ValueError(f"lsq(per={per!r}): choose 'row' or 'group'")
        spec = QuantSpec("affine", max(bits, 2), group_size)
        super().__init__(spec, scale_dtype)
        spec.check_shape(tuple(shape))
        self.bits = bits
        self.per = per
        n_alpha = shape[-1] // group_size if per == "group" else 1
        self.alpha = mx.ones((*shape[:-1], n_alpha), dtype=mx.float32)

    @property
    def export_spec(self) -> QuantSpec:
        if self.bits == 1:
            raise ValueError(
                "lsq with bits=1 (sign) has no MLX export: MLX's affine format needs an "
                "integer grid of at least 2 levels per sign; train with bits >= 2 to deploy"
            )
        return self.spec

    def init_from(self, w: mx.array) -> None:
        wg = group(w, self.spec.group_size)
        self.alpha = lsq.init_alpha(wg, self.bits, self.per == "group")

    def __call__(self, w: mx.array) -> mx.array:
        fn = lsq.lsq_function(self.bits, self.spec.group_size, self.scale_dtype)
        return fn(w, self.alpha)

    def grid(self, w: mx.array) -> Grid:
        spec = self.export_spec
        wg = group(w, spec.group_size).astype(mx.float32)
        code, scale, bias, _, _ = lsq.codes(wg, self.alpha, self.bits)
        shape = (*w.shape[:-1], w.shape[-1] // spec.group_size)
        sd = self._storage(w)
        scales = mx.broadcast_to(scale.squeeze(-1), shape).astype(sd)
        biases = mx.broadcast_to(bias.squeeze(-1), shape).astype(sd)
        return Grid(pack_codes(code.reshape(w.shape), spec.bits), scales, biases)

    def _extra_repr(self) -> str:
        name = {1: "sign", 2: "seq"}.get(self.bits, "lsq")
        return f"{name}, bits={self.bits}, group_size={self.spec.group_size}, per={self.per}"


class LearnedAffineQuantizer(Quantizer):
    """MLX's asymmetric per-group grid with learnable scale and bias (init from min/max).

    `scale_grad="fixed_codes"` reads the codes on the frozen initial grid (`anchor_scale`,
    `anchor_bias`: saved with the model, never trained) and trains the grid with DWQ's
    gradient (`learned_affine.py`); "ste" re-derives the codes from the learned grid.
    """

    kind = "learned_affine"

    def __init__(self, spec: QuantSpec, shape, scale_dtype=None, scale_grad: str = "ste"):
        if not spec.is_affine:
            raise ValueError(f"learned_affine needs mode='affine', got mode={spec.mode!r}")
        if scale_grad not in learned_affine.SCALE_GRADS:
            raise ValueError(
                f"learned_affine(scale_grad={scale_grad!r}): choose one of "
                f"{', '.join(learned_affine.SCALE_GRADS)}"
            )
        super().__init__(spec, scale_dtype)
        self.scale_grad = scale_grad
        spec.check_shape(tuple(shape))
        groups = (*shape[:-1], shape[-1] // spec.group_size)
        self.scale = mx.ones(groups, dtype=mx.float32)
        self.bias = mx.zeros(groups, dtype=mx.float32)
        if self.anchored:
            self.anchor_scale, self.anchor_bias = self.scale, self.bias
            self.freeze(recurse=False, keys=["anchor_scale", "anchor_bias"])

    @property
    def anchored(self) -> bool:
        """Codes read on the frozen anchor grid (scale_grad="fixed_codes")."""
        return self.scale_grad == "fixed_codes"

    def _extra_repr(self) -> str:
        return f"{self.kind}, {self.spec}, scale_grad={self.scale_grad}"

    def init_from(self, w: mx.array) -> None:
        self.scale, self.bias = learned_affine.init_params(w, self.spec.bits, self.spec.group_size)
        if self.anchored:
            self.anchor_scale, self.anchor_bias = self.scale, self.bias

    def _fq(self, w: mx.array, params) -> mx.array:
        la = learned_affine
        make = la.anchored_function if self.anchored else la.learned_affine_function
        return make(self.spec.bits, self.spec.group_size, self.scale_dtype)(w, *params)

    def _params(self) -> tuple[mx.array, ...]:
        anchors = (self.anchor_scale, self.anchor_bias) if self.anchored else ()
        return (self.scale, self.bias, *anchors)

    def __call__(self, w: mx.array) -> mx.array:
        return self._fq(w, self._params())

    def lookup(self, w: mx.array, ids: mx.array) -> mx.array:
        # A row's codes and values depend only on that row and its groups' (s, b) (and
        # anchors): gathering them first gives ŵ[ids] exactly, and the backward of the lookup
        # runs over the rows looked up (their gradients scattered back by the gathers).
        return self._fq(w[ids], [p[ids] for p in self._params()])

    def code_grid(self) -> tuple[mx.array, mx.array]:
        """(scale, bias) the codes are read on: the anchors, or the learned grid itself."""
        if self.anchored:
            return self.anchor_scale, self.anchor_bias
        return self.scale, self.bias

    def grid(self, w: mx.array) -> Grid:
        wg = group(w, self.spec.group_size).astype(mx.float32)
        code, _, _, _ = learned_affine.codes(wg, *self.code_grid(), self.spec.bits)
        sd = self._storage(w)
        return Grid(
            pack_codes(code.reshape(w.shape), self.spec.bits),
            learned_affine.clamp_scale(self.scale).astype(sd),
            self.bias.astype(sd),
        )


def make_quantizer(
    kind: str,
    spec: QuantSpec,
    weight: mx.array,
    scale_dtype: mx.Dtype | None = None,
    per: str = "row",
    scale_grad: str = "ste",
) -> Quantizer:
    """Build a quantizer of `kind` ("minmax", "lsq" or "learned_affine") for `weight` and
    initialise it from the weight's current values.

    Args:
        spec: target format (lsq and learned_affine need mode="affine").
        scale_dtype: round scales/biases to this dtype in the forward (the export dtype);
            None keeps the weight's dtype.
        per: for lsq, "row" or "group".
        scale_grad: for learned_affine, "ste" or "fixed_codes" (`learned_affine.py`).
    """
    spec.check_shape(tuple(weight.shape))
    if kind == "minmax":
        q = MinMaxQuantizer(spec, scale_dtype)
    elif kind == "lsq":
        if not spec.is_affine:
            raise ValueError(f"quantizer='lsq' needs mode='affine', got mode={spec.mode!r}")
        q = LSQQuantizer(spec.bits, spec.group_size, weight.shape, per, scale_dtype)
    elif kind == "learned_affine":
        q = LearnedAffineQuantizer(spec, weight.shape, scale_dtype, scale_grad)
    else:
        raise ValueError(f"quantizer={kind!r}: choose one of {', '.join(QUANTIZERS)}")
    q.init_from(weight)
    return q
