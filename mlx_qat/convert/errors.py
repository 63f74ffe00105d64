"""Errors `convert` raises (each message names the input, the problem and the fix), and the
refusal of anything non-finite before it is written.

A NaN or inf weight makes every loss NaN, and NaN compares unequal to itself: without these
checks a corrupt input surfaces as a misleading parity failure ("relative difference nan"), or,
with inf (which does compare equal) or without a parity check, as a published model that
produces NaN. So every float tensor is checked where it enters (a GGUF tensor after
dequantization, a checkpoint's or mlx-lm model's parameters) and where it leaves (after the
cast to the output dtype, which turns |w| > 65504 into inf in float16), and the losses the
export reports must be finite. Each refusal names the tensor or the loss and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

SHOWN = 3  # tensors named in one message


class ConvertError(ValueError):
    """Bad input or options: a missing/corrupt run, a format mismatch, an existing output."""


class ParityError(ConvertError):
    """The exported model's validation loss differs from the fake-quant model's; `report` is
    the `ParityReport` with both losses and the relative difference."""

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


def check_tensors(named: Iterable[tuple[str, mx.array]], where: str, fix: str) -> None:
    """Raise ConvertError naming the tensors of `named` (name, array) that hold NaN or inf;
    `where` says what holds them ("GGUF file x.gguf", ...)."""
    bad = []
    for name, a in named:
        if not mx.issubdtype(a.dtype, mx.floating):
            continue  # integer arrays (packed codes) hold no NaN
        nan, inf = mx.isnan(a).sum(), mx.isinf(a).sum()
        mx.eval(nan, inf)
        nan, inf = int(nan.item()), int(inf.item())
        if nan or inf:
            what = "NaN" if nan else "inf"
            bad.append(f"{what} in tensor {name} ({nan} NaN, {inf} inf of its {a.size} values)")
    if bad:
        more = f" and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
        raise ConvertError(f"{where}: {'; '.join(bad[:SHOWN])}{more}; {fix}; nothing was written")


def check_model(model: nn.Module, where: str, fix: str) -> None:
    """`check_tensors` over every parameter of `model` (QAT quantizer parameters included)."""
    check_tensors(tree_flatten(model.parameters()), where, fix)


def check_loss(name: str, value: float | None, where: str, fix: str) -> None:
    """Raise ConvertError when the loss `name` was measured and is NaN or inf."""
    if value is not None and not math.isfinite(value):
        raise ConvertError(f"{where}: {name} is {value}; {fix}; nothing was written")


def check_source_finite(source, model: nn.Module) -> None:
    """Refuse an input with a NaN or inf parameter, naming it, before anything is computed."""
    if source.kind == "checkpoint":
        where = f"checkpoint {source.path}"
        fix = (
            "the run diverged before it was saved or its weights were edited; convert an "
            "earlier checkpoint (its checkpoints/step_XXXXXXXX directory)"
        )
    else:
        where = f"model {source.path}"
        fix = "its weight files are damaged; download or convert the model again"
    check_model(model, where, fix)
