"""The self-check `prepare` runs: every fused kernel the run will launch, before it trains.

No CI machine has a GPU, so a kernel that miscompiles on a user's Mac or NVIDIA card would
otherwise train silently on a wrong grid. `self_check` runs, once per backend and kernel, each
fused kernel the run will use, for its quantizer and layers: the forward (min/max, fp mode,
LSQ/SEQ, learned affine; in the weight dtype, dequantizing in the scale dtype the quantizer
uses) and, for the learnable quantizers, the backward, on small awkward inputs
(kernel_cases.py), through the quantizers' own glue (α/scale clamps, per-row sums, g). The
tolerances are kernel_check.py's: ŵ and ∂L/∂w bit for bit, the per-group scale/bias gradients
within REDUCTION_RTOL·max|ref| (float32 summation order).

On any failure (compile error, launch error, disagreement) it logs one warning naming each
failing kernel (job, quantizer, bits, group size, dtypes) and the size of the disagreement
(elements that differ, max abs diff), and turns the kernels off (`backend.set_kernels_enabled`),
so training runs on the pure-MLX reference: same numerics, slower.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import mlx.core as mx

from . import backend
from .kernel_cases import fp_families, learned_case, lsq_case, minmax_families, stacked
from .kernel_check import CheckRow, learned_rows, lsq_rows, minmax_rows
from .spec import QuantSpec

logger = logging.getLogger(__name__)
_checked: dict[tuple, bool] = {}  # (backend, KernelUse) -> passed
_DEFAULT_LAYERS = ((QuantSpec(), mx.float32), (QuantSpec(), mx.bfloat16))


@dataclass(frozen=True)
class KernelUse:
    """The fused kernels one kind of layer launches.

    Attributes:
        quantizer: "minmax", "lsq" or "learned_affine".
        spec: the layer's format (lsq and learned_affine: affine).
        dtype: the weight dtype (the cotangent has it too).
        dequant_dtype: the dtype ŵ is dequantized in when it is not `dtype` (scale_dtype).
        per: LSQ's α granularity, "row" or "group" ("row" for the others).
    """

    quantizer: str
    spec: QuantSpec
    dtype: mx.Dtype
    dequant_dtype: mx.Dtype | None = None
    per: str = "row"

    def describe(self) -> str:
        parts = [self.spec.mode, f"bits={self.spec.bits}", f"g{self.spec.group_size}"]
        parts.append(_name(self.dtype))
        if self.dequant_dtype is not None:
            parts.append(f"dequant {_name(self.dequant_dtype)}")
        if self.quantizer == "lsq":
            parts.append(f"per={self.per}")
        return " ".join(parts)


def _name(dtype: mx.Dtype) -> str:
    return str(dtype).split(".")[-1]


def kernel_uses(
    quantizer: str,
    layers: Iterable[tuple[QuantSpec, mx.Dtype]],
    scale_dtype: mx.Dtype | None = None,
    per: str = "row",
) -> list[KernelUse]:
    """The distinct `KernelUse`s of a run, mirroring what the quantizers launch.

    Args:
        quantizer: the run's quantizer kind.
        layers: (spec, weight dtype) of each quantized layer (repeats are fine).
        scale_dtype: the run's scale storage dtype (None: each weight's dtype).
        per: LSQ's α granularity.

    Raises:
        ValueError: an unknown quantizer, or a learnable quantizer with a non-affine spec.
    """
    out: dict[KernelUse, None] = {}
    for spec, dtype in layers:
        if quantizer == "minmax":
            # MinMaxQuantizer dequantizes in scale_dtype only for affine and another dtype.
            other = spec.is_affine and scale_dtype is not None and scale_dtype != dtype
            out[KernelUse("minmax", spec, dtype, scale_dtype if other else None)] = None
        elif quantizer in ("lsq", "learned_affine"):
            if not spec.is_affine:
                raise ValueError(f"self_check: quantizer={quantizer!r} needs affine, got {spec}")
            lsq_per = per if quantizer == "lsq" else "row"
            out[KernelUse(quantizer, spec, dtype, scale_dtype, lsq_per)] = None
        else:
            raise ValueError(f"self_check: unknown quantizer {quantizer!r}")
    return list(out)


def use_rows(on: str, use: KernelUse) -> list[CheckRow]:
    """Rows for every kernel output `use` involves, on fused backend `on` (small inputs)."""
    spec, dt, dd, case = use.spec, use.dtype, use.dequant_dtype, use.describe()
    bits, gs = spec.bits, spec.group_size
    if use.quantizer == "minmax":
        if spec.is_affine:
            w = stacked(minmax_families(bits, gs, seed=bits * gs, rows=1), dt)
        else:
            w = stacked(
                {**minmax_families(4, 32, seed=11, rows=1), **fp_families(seed=12, rows=1)}, dt
            )
        return minmax_rows(on, w, spec, dd, case)
    if use.quantizer == "lsq":
        w, alpha = lsq_case(bits, gs, use.per, seed=bits, rows=4)
        return lsq_rows(on, w.astype(dt), alpha, bits, gs, dd, case)
    w, scale, bias = learned_case(bits, gs, seed=bits, rows=4)
    return learned_rows(on, w.astype(dt), scale, bias, bits, gs, dd, case)


def self_check(
    quantizer: str = "minmax",
    layers: Iterable[tuple[QuantSpec, mx.Dtype]] | None = None,
    scale_dtype: mx.Dtype | None = None,
    per: str = "row",
) -> bool:
    """Check each fused kernel the run will use against the reference; fall back if one fails.

    Call outside `mx.compile`, before training (`prepare` does). Each (backend, kernel use)
    is checked once per process.

    Args:
        quantizer: "minmax", "lsq" or "learned_affine".
        layers: (spec, weight dtype) of the quantized layers (default: affine 4-bit, group 64,
            in float32 and bfloat16).
        scale_dtype: the run's scale storage dtype, None for each weight's dtype.
        per: LSQ's α granularity ("row" or "group").

    Returns:
        True when no fused backend is active or every kernel passed; False when one failed
        (the kernels are then off and training uses the pure-MLX path).

    Example:
        >>> self_check("lsq", [(QuantSpec("affine", 2, 64), mx.bfloat16)])
    """
    on = backend.fused_backend()
    if on is None:
        return True
    uses = kernel_uses(quantizer, _DEFAULT_LAYERS if layers is None else layers, scale_dtype, per)
    todo = [u for u in uses if (on, u) not in _checked]
    failed: list[CheckRow] = []
    for use in todo:
        bad = [r for r in use_rows(on, use) if not r.passed]
        _checked[(on, use)] = not bad
        failed += bad
    if failed:
        logger.warning(
            "mlx_qat: a fused %s fake-quant kernel failed its self-check against the "
            "pure-MLX reference: %s. Using the pure-MLX path instead (same numerics, slower). "
            "Please report this with the table of `python -m mlx_qat check`; set "
            "MLX_QAT_KERNELS=0 to skip the kernels and this check.",
            on,
            "; ".join(r.describe() for r in failed),
        )
        backend.set_kernels_enabled(False)
    return all(_checked[(on, u)] for u in uses)
