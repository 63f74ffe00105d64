"""The fused kernels against the pure-MLX reference (inputs, comparison: kernel_cases.py).

- `check_backend()` (the `mlx_qat.check` verb; `format_report` prints its table): every fused
  kernel (min/max, mxfp4/mxfp8/nvfp4, LSQ/SEQ/sign, learned affine; forward and backward) on
  the awkward inputs in float32, float16 and bfloat16 (no Metal/CUDA: the CPU fast path).
- `self_check(...)` (what `prepare` runs before training): only the kernels the run will
  launch (`kernel_uses`), once per backend and kernel, on fewer rows. No CI machine has a GPU,
  so a kernel that miscompiles on a user's Mac or NVIDIA card would otherwise train silently on
  a wrong grid. On any failure it logs one warning naming each failing kernel and the size of
  the disagreement, and turns the kernels off (`backend.set_kernels_enabled`): training then
  runs on the pure-MLX reference, same numerics, slower.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import mlx.core as mx

from ..kernels import gpu
from . import backend
from .kernel_cases import (
    CheckRow,
    cpu_rows,
    fp_families,
    kernel_rows,
    minmax_families,
    minmax_rows,
    nonfinite_case,
    stacked,
)
from .spec import AFFINE_BITS, AFFINE_GROUP_SIZES, FP_MODES, QuantSpec

logger = logging.getLogger(__name__)

DTYPES = (mx.float32, mx.float16, mx.bfloat16)


@dataclass
class CheckReport:
    """What `check_backend` found: the backend checked, one row per output, and a note."""

    backend: str
    rows: list[CheckRow] = field(default_factory=list)
    note: str = ""

    @property
    def failures(self) -> list[CheckRow]:
        return [r for r in self.rows if not r.passed]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1


def dtype_name(dtype: mx.Dtype) -> str:
    return str(dtype).split(".")[-1]


# --- the user's check: every kernel of a backend ----------------------------------------------


def _gpu_rows(on: str) -> list[CheckRow]:
    rows: list[CheckRow] = []
    for dtype in DTYPES:
        dn = dtype_name(dtype)
        for bits in AFFINE_BITS:
            for gs in AFFINE_GROUP_SIZES:
                rows += kernel_rows(on, "minmax", bits, gs, dtype, case=f"bits={bits} g{gs} {dn}")
        for gs in AFFINE_GROUP_SIZES:
            w = mx.array(nonfinite_case()).astype(dtype)
            case = f"nan/inf/±0 bits=4 g{gs} {dn}"
            rows += minmax_rows(on, w, QuantSpec("affine", 4, gs), case=case)
        w = stacked(minmax_families(3, 128, seed=2), dtype)[:1, :128]
        rows += minmax_rows(on, w, QuantSpec("affine", 3, 128), case=f"one group bits=3 {dn}")
        for mode in FP_MODES:
            spec = QuantSpec.for_mode(mode)
            rows += kernel_rows(on, "minmax", spec.bits, spec.group_size, dtype, mode=mode, case=dn)
            w = stacked(fp_families(seed=4), dtype)[:1, : 3 * spec.group_size]
            rows += minmax_rows(on, w, spec, case=f"3 groups {dn}")
        for bits in (1, 2, 4, 8):
            rows += kernel_rows(on, "lsq", bits, 64, dtype, case=f"bits={bits} g64 {dn}")
        for bits in (2, 4, 8):
            rows += kernel_rows(on, "learned_affine", bits, 64, dtype, case=f"bits={bits} g64 {dn}")
    return rows


def check_backend(backend_name: str | None = None) -> CheckReport:
    """Run every fused kernel of `backend_name` against the reference and report each output.

    `backend_name`: "metal", "cuda" or "cpu" (the CPU fast path); default: this machine's GPU
    backend, else "cpu" (launched explicitly, whatever MLX_QAT_KERNELS and the default device).
    ValueError when this machine's MLX cannot run it. A GPU report has 156 rows (about 3.5
    minutes on CUDA, mostly compiling), a CPU report 108.
    """
    here = backend.machine_backend()
    name = backend_name or here
    if name is None or name == "cpu":
        why = "no GPU backend (Metal/CUDA) in this MLX" if here is None else "asked for cpu"
        rows = []
        for dtype in DTYPES:
            for bits in AFFINE_BITS:
                for gs in AFFINE_GROUP_SIZES:
                    w = stacked(minmax_families(bits, gs, seed=100 + bits * gs), dtype)
                    rows += cpu_rows(w, bits, gs, f"bits={bits} g{gs} {dtype_name(dtype)}")
        return CheckReport("cpu", rows, f"{why}: checked the CPU fast path against the reference")
    if (name in backend.FUSED and name != here) or name not in gpu.KERNELS:
        raise ValueError(
            f"check_backend({name!r}): this machine's MLX cannot run it (available: "
            f"{', '.join(x for x in (here, 'cpu') if x)}); omit the backend to check what "
            "this machine has"
        )
    note = "" if backend.kernels_enabled() else "kernels are disabled here (MLX_QAT_KERNELS=0)"
    return CheckReport(name, _gpu_rows(name), note)


def format_report(report: CheckReport, failures_only: bool = False) -> str:
    """A plain-text table of `report` (one line per row) and a PASS/FAIL summary line."""
    head = ("kernel", "output", "case", "elements", "differ", "max|Δ|", "tolerance", "result")
    lines = []
    for r in report.rows:
        if failures_only and r.passed:
            continue
        tol = "exact" if r.tolerance == 0 else f"{r.tolerance:g}·max|ref|"
        result = "ok" if r.passed else ("ERROR " + r.error if r.error else "FAIL")
        diff = f"{r.max_abs_diff:.3g}"
        lines.append(
            (r.kernel, r.output, r.case, str(r.elements), str(r.differ), diff, tol, result)
        )
    widths = [max(len(x) for x in col) for col in zip(head, *lines)] if lines else []
    out = [f"mlx_qat kernel check: {report.backend} (MLX {mx.__version__})"]
    if report.note:
        out.append(report.note)
    if lines:
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        out += [fmt.format(*head).rstrip(), *(fmt.format(*x).rstrip() for x in lines)]
    n, bad = len(report.rows), len(report.failures)
    verdict = "PASS" if report.passed else "FAIL"
    out.append(f"{verdict}: {n - bad} of {n} checks passed" + (f", {bad} failed" if bad else ""))
    return "\n".join(out)


# --- prepare's self-check: the kernels one run will launch -----------------------------------

_checked: dict[tuple, bool] = {}  # (backend, KernelUse) -> passed
_DEFAULT_LAYERS = ((QuantSpec(), mx.float32), (QuantSpec(), mx.bfloat16))
SELF_CHECK_ROWS = {"minmax": 1, "lsq": 4, "learned_affine": 4}  # rows per input family


@dataclass(frozen=True)
class KernelUse:
    """The fused kernels one kind of layer launches: `dtype` is the weight's (and the
    cotangent's), `dequant_dtype` the scale dtype ŵ is dequantized in when not `dtype`."""

    quantizer: str
    spec: QuantSpec
    dtype: mx.Dtype
    dequant_dtype: mx.Dtype | None = None
    per: str = "row"

    def describe(self) -> str:
        parts = [self.spec.mode, f"bits={self.spec.bits}", f"g{self.spec.group_size}"]
        parts.append(dtype_name(self.dtype))
        if self.dequant_dtype is not None:
            parts.append(f"dequant {dtype_name(self.dequant_dtype)}")
        if self.quantizer == "lsq":
            parts.append(f"per={self.per}")
        return " ".join(parts)


def kernel_uses(
    quantizer: str,
    layers: Iterable[tuple[QuantSpec, mx.Dtype]],
    scale_dtype: mx.Dtype | None = None,
    per: str = "row",
) -> list[KernelUse]:
    """The distinct `KernelUse`s of a run whose quantized layers have (spec, weight dtype)
    `layers`, mirroring what the quantizers launch. ValueError: an unknown quantizer, or a
    learnable quantizer with a non-affine spec."""
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


def self_check(
    quantizer: str = "minmax",
    layers: Iterable[tuple[QuantSpec, mx.Dtype]] | None = None,
    scale_dtype: mx.Dtype | None = None,
    per: str = "row",
) -> bool:
    """Check each fused kernel the run will use against the reference; fall back if one fails.

    Call outside `mx.compile`, before training (`prepare` does); each (backend, kernel use) is
    checked once per process. `layers`: (spec, weight dtype) of the quantized layers (default:
    affine 4-bit g64 in float32 and bfloat16); `scale_dtype`, `per`: as the run's quantizer.
    Returns False when a kernel failed (the kernels are then off), else True.
    """
    on = backend.fused_backend()
    if on is None:
        return True
    uses = kernel_uses(quantizer, _DEFAULT_LAYERS if layers is None else layers, scale_dtype, per)
    failed: list[CheckRow] = []
    for use in [u for u in uses if (on, u) not in _checked]:
        spec = use.spec
        rows = kernel_rows(
            on, use.quantizer, spec.bits, spec.group_size, use.dtype, mode=spec.mode,
            dequant_dtype=use.dequant_dtype, per=use.per,
            rows=SELF_CHECK_ROWS[use.quantizer], case=use.describe(),
        )  # fmt: skip
        bad = [r for r in rows if not r.passed]
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
