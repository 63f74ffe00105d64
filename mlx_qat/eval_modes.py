"""Validation loss and bits per byte of a QAT model in three modes, on fixed batches.

- **fp**: fake quant off: the float weights as they are.
- **qat**: fake quant on: the grid the model trains (and exports) with.
- **ptq**: round-to-nearest of the current float weights at each layer's target format: every
  QAT layer's quantizer is swapped for the min/max one (`MinMaxQuantizer`, bit-identical to
  `mx.quantize`/`mx.dequantize`) for the duration of the evaluation.

`bpb = loss_nats / ln 2 / bytes_per_token` (bytes of UTF-8 text per token of the split), and
"% of the PTQ gap recovered" = `(ptq − qat) / (ptq − fp)`. With the min/max quantizer qat and
ptq are the same computation on the same weights, so ptq is reported once for both; the
meaningful baseline is then the PTQ of an FP model of the same budget (`--fp-twin`). Loss is
the mean over every target token of every batch (sum / count). With a `teacher` (a frozen
float model), each mode also reports `kl`, the mean KL(p_teacher ‖ p_model) per target token at
T = 1 (`kl_to_teacher`), the teacher's logits computed once per batch for every mode.

The float model's **basin level** (`basin_level`, shared by `mlx_qat.diagnose` and the
trainer's basin monitor): a loss within

    ε = max(BASIN_TOLERANCE, BASIN_NOISE_Z · SE),   BASIN_TOLERANCE = 0.01 nats, BASIN_NOISE_Z = 2

of the float loss counts as inside the basin, SE the standard error of the mean of the per-batch
differences (quantized − float) on the same batches (`paired_se`): 0.01 nats is +1% perplexity,
and a gap the batches cannot tell from zero counts as inside.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass

import mlx.core as mx
import mlx.nn as nn

logger = logging.getLogger(__name__)

MODES = ("fp", "qat", "ptq")
BASIN_TOLERANCE = 0.01
BASIN_NOISE_Z = 2.0


@dataclass(frozen=True)
class EvalResult:
    """Mean loss and KL to a teacher (nats/token; `kl` left out of `to_dict` without one)."""

    loss: float
    bpb: float
    tokens: int
    kl: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["kl"] is None:
            del d["kl"]
        return d


def bits_per_byte(loss_nats: float, bytes_per_token: float) -> float:
    """`loss / ln 2 / bytes_per_token`."""
    return loss_nats / math.log(2) / bytes_per_token


def log_softmax(logits: mx.array, temperature: float = 1.0) -> mx.array:
    """`z/T − logsumexp(z/T)` over the last axis, in float32."""
    z = logits.astype(mx.float32)
    z = z / temperature if temperature != 1.0 else z
    return z - mx.logsumexp(z, axis=-1, keepdims=True)


# expm1 of a float32 stays finite up to ~88; past this shifted log-ratio the direct form is used
_EXPM1_MAX = 80.0


def kl_to_teacher(logits: mx.array, teacher_logits: mx.array, temperature: float = 1.0) -> mx.array:
    """Per-token KL(p_teacher ‖ p_student) at temperature T (shape `logits.shape[:-1]`, float32):

        p^T = softmax(z / T),   KL = Σ_v p_t^T(v) · (log p_t^T(v) − log p_s^T(v))

    Computed in float32 from the logit difference d = (z_t − z_s) / T, not from the two
    log-softmaxes: log p_t − log p_s = d − c with c = lse(z_t/T) − lse(z_s/T) = log E_s[e^d],
    so with u = d − k (k = E_s[d], any constant cancels)

        KL = E_t[u] − log1p(E_s[expm1(u)]),   E_q[x] = Σ q·x / Σ q.

    Both terms carry float32 rounding relative to |u|, where the log-softmax form carries
    rounding of log V (~11 for 49k ids) that swamps KL ~ |u|²/2 at large T (it was negative at
    T = 100). Tokens where some u > `_EXPM1_MAX` (a huge teacher/student gap, small T: KL is
    then large) use c = lse_t − lse_s directly. The result is clamped at 0: KL ≥ 0 exactly,
    and what is left below 0 is rounding of a few float32 ulps of |u|, not signal. It is
    exactly 0 where the logits are equal; its gradient is (p_s^T − p_t^T) / T.
    """
    zs = logits.astype(mx.float32)
    zt = teacher_logits.astype(mx.float32)
    d = zt - zs  # the difference first: z_t/T − z_s/T would round each to |z|/T precision
    d = d / temperature if temperature != 1.0 else d
    log_s = log_softmax(zs, temperature)
    log_t = log_softmax(zt, temperature)
    p_s, p_t = mx.exp(log_s), mx.exp(log_t)
    n_s, n_t = p_s.sum(axis=-1), p_t.sum(axis=-1)  # 1 up to the rounding of lse
    k = mx.stop_gradient((p_s * d).sum(axis=-1, keepdims=True) / n_s[..., None])
    u = d - k
    mean_t = (p_t * u).sum(axis=-1) / n_t
    small = mean_t - mx.log1p((p_s * mx.expm1(mx.minimum(u, _EXPM1_MAX))).sum(axis=-1) / n_s)
    direct = (
        mean_t
        + k[..., 0]
        - (mx.logsumexp(zt / temperature, axis=-1) - mx.logsumexp(zs / temperature, axis=-1))
    )
    kl = mx.where(u.max(axis=-1) <= _EXPM1_MAX, small, direct)
    return mx.maximum(kl, 0.0)


def _evaluate_modes(
    model: nn.Module,
    batches: Iterable[mx.array],
    bytes_per_token: float,
    modes: list,
    teacher: nn.Module | None = None,
) -> dict:
    # {mode: EvalResult} for `modes` ("fp", "qat", "ptq", None = as it is), one pass over
    # `batches`; a "ptq" mode the model cannot round to (ValueError) is None
    zero = mx.array(0.0, dtype=mx.float32)
    ce, kl = {m: zero for m in modes}, {m: zero for m in modes}
    count = 0
    for batch in batches:
        x, y = batch[:, :-1], batch[:, 1:]
        # the teacher's logits once per batch, shared by every mode
        t_logits = None if teacher is None else mx.stop_gradient(teacher(x))
        for mode in [m for m in modes if m in ce]:
            try:
                with eval_mode(model, mode) if mode else contextlib.nullcontext():
                    logits = model(x).astype(mx.float32)
            except ValueError as e:  # e.g. 1-bit sign quantizers: no MLX format to round to
                if mode != "ptq":
                    raise
                logger.warning("eval: no PTQ baseline (%s)", e)
                del ce[mode], kl[mode]
                continue
            ce[mode] = ce[mode] + nn.losses.cross_entropy(logits, y, reduction="sum")
            if t_logits is not None:
                kl[mode] = kl[mode] + kl_to_teacher(logits, t_logits).sum()
            mx.eval(ce[mode], kl[mode])
        count += batch.shape[0] * (batch.shape[1] - 1)
    if count == 0:
        raise ValueError("evaluate: no validation tokens; use more --eval-batches or data")
    out: dict = {}
    for mode in modes:
        if mode not in ce:
            out[mode] = None
            continue
        loss = ce[mode].item() / count
        k = kl[mode].item() / count if teacher is not None else None
        out[mode] = EvalResult(loss, bits_per_byte(loss, bytes_per_token), count, k)
    return out


def evaluate(
    model: nn.Module,
    batches: Iterable[mx.array],
    bytes_per_token: float,
    teacher: nn.Module | None = None,
) -> EvalResult:
    """Mean next-token loss of `model` over `batches` ((B, T+1) int32 arrays), as it is (and
    its mean KL to `teacher`, when given)."""
    return _evaluate_modes(model, batches, bytes_per_token, [None], teacher)[None]


def batch_losses(
    model: nn.Module, batches: Iterable[mx.array], bytes_per_token: float
) -> tuple[float, list[float]]:
    """(mean loss over every target token, the mean loss of each batch) of `model` as it is."""
    per, total, count = [], 0.0, 0
    for batch in batches:
        r = evaluate(model, [batch], bytes_per_token)
        per.append(r.loss)
        total += r.loss * r.tokens
        count += r.tokens
    if count == 0:
        raise ValueError("evaluate: no validation tokens; use more --eval-batches or data")
    return total / count, per


def paired_se(a: Sequence[float], b: Sequence[float]) -> float:
    """Standard error of the mean of the per-batch differences a − b (0 with < 2 batches):
    the noise of a paired comparison on the same batches."""
    n = len(a)
    if n != len(b):
        raise ValueError(f"paired_se: {n} and {len(b)} batches")
    if n < 2:
        return 0.0
    d = [x - y for x, y in zip(a, b)]
    mean = sum(d) / n
    return math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1) / n)


def basin_level(
    quantized: Sequence[float],
    float_: Sequence[float],
    tolerance: float = BASIN_TOLERANCE,
    noise_z: float = BASIN_NOISE_Z,
) -> tuple[float, float]:
    """(ε, SE): the basin level of the module header from per-batch losses of a quantized
    point and of the float point on the same batches."""
    se = paired_se(quantized, float_)
    return max(tolerance, noise_z * se), se


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
    teacher: nn.Module | None = None,
) -> dict:
    """FP, QAT and PTQ loss/bpb of `model` on the same `batches`, and the gap recovered:
    {"fp", "ptq", "qat": `EvalResult.to_dict()` or None, "gap_recovered": float or None}.
    `quantizers_ready` False (before the FP→QAT switch, learnable quantizers still as
    `prepare` left them): no "qat" loss. The model's fake-quant state is restored afterwards.
    """
    batches = list(batches)
    if not _qat_layers(model):
        fp = _evaluate_modes(model, batches, bytes_per_token, ["fp"], teacher)["fp"].to_dict()
        return {"fp": fp, "qat": None, "ptq": None, "gap_recovered": None}
    same = all_minmax(model)
    # With min/max quantizers QAT and PTQ are the same computation on the same weights.
    modes = ["fp", "ptq"] + (["qat"] if quantizers_ready and not same else [])
    res = _evaluate_modes(model, batches, bytes_per_token, modes, teacher)
    out = {m: (r.to_dict() if r else None) for m, r in res.items()}
    out["qat"] = out["ptq"] if same else out.get("qat")
    loss = {m: (out[m]["loss"] if out[m] else None) for m in MODES}
    # With min/max quantizers QAT *is* the PTQ of these weights: no gap to report here.
    out["gap_recovered"] = None if same else gap_recovered(loss["fp"], loss["qat"], loss["ptq"])
    return {k: out[k] for k in ("fp", "ptq", "qat", "gap_recovered")}


def format_triple(ev: dict) -> str:
    """One line: `fp 3.21 (1.62 bpb) | qat ... | ptq ... | gap 63%`."""
    parts = []
    for mode in MODES:
        r = ev.get(mode)
        if r:
            kl = f", kl {r['kl']:.4f}" if r.get("kl") is not None else ""
            parts.append(f"{mode} {r['loss']:.4f} ({r['bpb']:.4f} bpb{kl})")
    g = ev.get("gap_recovered")
    if g is not None:
        parts.append(f"gap recovered {100 * g:.1f}%")
    return " | ".join(parts)
