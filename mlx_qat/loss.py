"""Validation loss and bits per byte of a QAT model in three modes, on fixed batches.

- **fp**: fake quant off: the float weights as they are.
- **qat**: fake quant on: the grid the model trains (and exports) with.
- **ptq**: round-to-nearest of the current float weights at each layer's target format: every
  QAT layer's quantizer is swapped for the min/max one (`MinMaxQuantizer`, bit-identical to
  `mx.quantize`/`mx.dequantize`) for the duration of the evaluation.

`bpb = loss_nats / ln 2 / bytes_per_token` (bytes of UTF-8 text per token of the split), and
"% of the PTQ gap recovered" = `(ptq − qat) / (ptq − fp)`. With the min/max quantizer the qat
and ptq modes are the same computation on the same weights, so ptq is reported once for both;
the meaningful baseline is then the PTQ of an FP model trained on the same budget (the trainer's
`--fp-twin`). Loss is the mean over every target token of every batch (sum / count).

`mlx_qat.eval.evaluate_checkpoint` (and the `mlx_qat.eval` command) apply this to a checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

import mlx.core as mx
import mlx.nn as nn

logger = logging.getLogger(__name__)

MODES = ("fp", "qat", "ptq")


@dataclass(frozen=True)
class EvalResult:
    """Mean loss (nats/token), bits per byte and the number of target tokens."""

    loss: float
    bpb: float
    tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


def bits_per_byte(loss_nats: float, bytes_per_token: float) -> float:
    """`loss / ln 2 / bytes_per_token`."""
    return loss_nats / math.log(2) / bytes_per_token


def _batch_loss_sum(model: nn.Module, batch: mx.array) -> mx.array:
    logits = model(batch[:, :-1]).astype(mx.float32)
    return nn.losses.cross_entropy(logits, batch[:, 1:], reduction="sum")


def evaluate(model: nn.Module, batches: Iterable[mx.array], bytes_per_token: float) -> EvalResult:
    """Mean next-token loss of `model` over `batches` ((B, T+1) int32 arrays), as it is."""
    total, count = mx.array(0.0, dtype=mx.float32), 0
    for batch in batches:
        total = total + _batch_loss_sum(model, batch)
        mx.eval(total)
        count += batch.shape[0] * (batch.shape[1] - 1)
    if count == 0:
        raise ValueError("evaluate: no validation tokens; use more --eval-batches or data")
    loss = total.item() / count
    return EvalResult(loss, bits_per_byte(loss, bytes_per_token), count)


def _qat_layers(model: nn.Module):
    from .prepare import qat_layers

    return list(qat_layers(model))


@contextlib.contextmanager
def eval_mode(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    """Temporarily put every QAT layer in `mode` ("fp", "qat" or "ptq"); restores after."""
    if mode not in MODES:
        raise ValueError(f"eval mode {mode!r}: choose one of {', '.join(MODES)}")
    from .quant.quantizers import MinMaxQuantizer

    layers = [layer for _, layer in _qat_layers(model)]
    saved = [(layer.fake_quant, layer.quantizer) for layer in layers]
    try:
        for layer in layers:
            layer.fake_quant = mode != "fp"
            if mode == "ptq":
                q = layer.quantizer
                layer.quantizer = MinMaxQuantizer(layer.spec, q.scale_dtype)
        yield model
    finally:
        for layer, (flag, q) in zip(layers, saved):
            layer.fake_quant = flag
            layer.quantizer = q


def all_minmax(model: nn.Module) -> bool:
    """True when every QAT layer uses the min/max quantizer (QAT and PTQ are then one grid)."""
    from .quant.quantizers import MinMaxQuantizer

    return all(type(layer.quantizer) is MinMaxQuantizer for _, layer in _qat_layers(model))


def gap_recovered(fp: float, qat: float | None, ptq: float | None) -> float | None:
    """`(ptq − qat) / (ptq − fp)`; None when undefined (no gap, or a value missing)."""
    if qat is None or ptq is None or not ptq - fp > 1e-9:
        return None
    return (ptq - qat) / (ptq - fp)


def eval_triple(
    model: nn.Module,
    batches: Iterable[mx.array],
    bytes_per_token: float,
    quantizers_ready: bool = True,
) -> dict:
    """FP, QAT and PTQ loss/bpb of `model` on the same `batches`, and the gap recovered.

    Args:
        model: a prepared model (QAT layers); its fake-quant state is restored afterwards.
        batches: a re-iterable sequence of fixed validation batches.
        bytes_per_token: of the validation split.
        quantizers_ready: False before the FP→QAT switch, when learnable quantizers still
            hold their values from `prepare` (their "qat" loss is then not reported).

    Returns:
        {"fp": {...}, "qat": {...} | None, "ptq": {...} | None, "gap_recovered": float | None}
        where each {...} is `EvalResult.to_dict()`.
    """
    batches = list(batches)
    out: dict = {}
    with eval_mode(model, "fp"):
        out["fp"] = evaluate(model, batches, bytes_per_token).to_dict()
    if not _qat_layers(model):
        out.update(qat=None, ptq=None, gap_recovered=None)
        return out
    try:
        with eval_mode(model, "ptq"):
            out["ptq"] = evaluate(model, batches, bytes_per_token).to_dict()
    except ValueError as e:  # e.g. 1-bit sign quantizers: no MLX format to round to
        logger.warning("eval: no PTQ baseline (%s)", e)
        out["ptq"] = None
    if all_minmax(model):
        out["qat"] = out["ptq"]  # the same computation on the same weights
    elif quantizers_ready:
        with eval_mode(model, "qat"):
            out["qat"] = evaluate(model, batches, bytes_per_token).to_dict()
    else:
        out["qat"] = None
    loss = {k: (v["loss"] if v else None) for k, v in out.items()}
    # With min/max quantizers QAT *is* the PTQ of these weights: no gap to report here.
    same = all_minmax(model)
    out["gap_recovered"] = None if same else gap_recovered(loss["fp"], loss["qat"], loss["ptq"])
    return out


def format_triple(ev: dict) -> str:
    """One line: `fp 3.21 (1.62 bpb) | qat ... | ptq ... | gap 63%`."""
    parts = []
    for mode in MODES:
        r = ev.get(mode)
        if r:
            parts.append(f"{mode} {r['loss']:.4f} ({r['bpb']:.4f} bpb)")
    g = ev.get("gap_recovered")
    if g is not None:
        parts.append(f"gap recovered {100 * g:.1f}%")
    return " | ".join(parts)
