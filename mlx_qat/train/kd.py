"""The distillation loss of the training step, with a closed-form gradient, in token chunks.

Per target token, with z_s the student's and z_t the teacher's logits over V ids and
p^T = softmax(z / T):

    KD = T² · KL(p_t^T ‖ p_s^T)                   value: `eval_modes.kl_to_teacher` (float32)
    ∂KD/∂z_s = T · (p_s^T − p_t^T)                 (Hinton et al., 2015)

Autodiff through `kl_to_teacher` keeps about a dozen (tokens, V) float32 intermediates (2.5 GB
for 1,024 tokens of a 49k vocabulary). Here value and gradient are computed `CHUNK` elements
(whole tokens) at a time inside an `mx.custom_function` whose VJP is the closed form above; the
teacher's cotangent is a lazy zero, never evaluated.

`kd_head_per_token`, for decoders whose logits are hidden states h times an output matrix W
(`lm_head` or the tied embedding), forms z = h·Wᵀ one chunk at a time, so neither model's full
logits ever exist; its value is the direct form Σ p_t·(y_t − y_s) − (lse(y_t) − lse(y_s)),
y = z/T (`_kl_direct`: the training follows the gradient, not the value); its forward also
keeps T·(p_s^T − p_t^T) of every token (one (tokens, V) float32 array) and its VJP is two
whole matmuls with it:

    ∂/∂h_s = G·W_s,   ∂/∂W_s = Gᵀ·h_s,   G = cot·T·(p_s^T − p_t^T).

Forming both models' logits again in the backward, chunk by chunk, took 1.2× the time of
the head's value and gradient and, with a (V, d) partial ∂W per chunk, more memory
(`benchmarks/results/memory_smollm2_v4.md`).

`split_head` checks on a short input that h·Wᵀ is the model's own output (a head bias, logit
scaling or soft-capping fails it and keeps the full-logit loss).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import mlx.core as mx
import mlx.nn as nn

from ..eval_modes import kl_to_teacher

# Elements of one (tokens, V) chunk: 16 MiB of float32 per temporary.
CHUNK = 1 << 22


def kd_per_token(logits: mx.array, teacher_logits: mx.array, temperature: float) -> mx.array:
    """T² · KL(p_t^T ‖ p_s^T) per token (shape `logits.shape[:-1]`, float32), differentiable
    in `logits` with the closed-form gradient T · (p_s^T − p_t^T)."""
    return _kd(float(temperature))(logits, teacher_logits)


def _chunks(n_tokens: int, vocab: int) -> list[tuple[int, int]]:
    rows = max(1, CHUNK // max(vocab, 1))
    return [(i, min(i + rows, n_tokens)) for i in range(0, n_tokens, rows)]


@cache
def _kd(temperature: float):
    t = temperature

    @mx.custom_function
    def kd(zs: mx.array, zt: mx.array) -> mx.array:
        shape, v = zs.shape[:-1], zs.shape[-1]
        zs2, zt2 = zs.reshape(-1, v), zt.reshape(-1, v)
        parts = [kl_to_teacher(zs2[a:b], zt2[a:b], t) for a, b in _chunks(zs2.shape[0], v)]
        return (t * t * mx.concatenate(parts)).reshape(shape)

    @kd.vjp
    def kd_vjp(primals, cotangent, output):
        zs, zt = primals
        v = zs.shape[-1]
        zs2, zt2 = zs.reshape(-1, v), zt.reshape(-1, v)
        cot = cotangent.reshape(-1, 1).astype(mx.float32)
        parts = []
        for a, b in _chunks(zs2.shape[0], v):
            ps = mx.softmax(zs2[a:b].astype(mx.float32) / t, axis=-1)
            pt = mx.softmax(zt2[a:b].astype(mx.float32) / t, axis=-1)
            parts.append((cot[a:b] * t) * (ps - pt))
        grad = mx.concatenate(parts).reshape(zs.shape).astype(zs.dtype)
        return grad, mx.zeros_like(zt)

    return kd


def kd_head_per_token(
    h: mx.array, w: mx.array, teacher_h: mx.array, teacher_w: mx.array, temperature: float
) -> mx.array:
    """`kd_per_token` of the logits h·wᵀ against teacher_h·teacher_wᵀ, formed chunk by chunk;
    differentiable in `h` and `w` (shape `h.shape[:-1]`, float32)."""
    return _kd_head(float(temperature))(h, w, teacher_h, teacher_w)


def _kl_direct(ys: mx.array, yt: mx.array, p_t: mx.array) -> mx.array:
    """KL(p_t ‖ p_s) per token from the tempered logits y = z/T and the teacher's p_t:
    Σ p_t·(y_t − y_s) − (lse(y_t) − lse(y_s)), clamped at 0. The head's value (its gradient is
    the closed form, so the training does not depend on it) at 4 exp passes instead of
    `kl_to_teacher`'s 7: it carries the rounding of lse (~1e-6 nats a token, ×T² in the
    loss), which matters only for KL near 0 or at large T; evaluation keeps `kl_to_teacher`."""
    lse = mx.logsumexp(yt, axis=-1) - mx.logsumexp(ys, axis=-1)
    return mx.maximum((p_t * (yt - ys)).sum(axis=-1) - lse, 0.0)


@cache
def _kd_head(temperature: float):
    t = temperature

    def logits(h, w):
        return (h @ w.T).astype(mx.float32)

    @mx.custom_function
    def kd(h, w, ht, wt):
        # Outputs: the per-token KD and G/cot = T·(p_s − p_t) for every token: the step always
        # takes the gradient, and keeping G (one (tokens, V) float32 array) lets the backward
        # be two whole matmuls instead of forming both models' logits again chunk by chunk.
        shape, d = h.shape[:-1], h.shape[-1]
        h2, ht2 = h.reshape(-1, d), ht.reshape(-1, ht.shape[-1])
        values, grads = [], []
        for a, b in _chunks(h2.shape[0], w.shape[0]):
            zs, zt = logits(h2[a:b], w), logits(ht2[a:b], wt)
            ys, yt = zs / t, zt / t
            p_t = mx.softmax(yt, axis=-1)
            grads.append(t * (mx.softmax(ys, axis=-1) - p_t))
            values.append(_kl_direct(ys, yt, p_t))
        return (t * t * mx.concatenate(values)).reshape(shape), mx.concatenate(grads)

    @kd.vjp
    def kd_vjp(primals, cotangents, outputs):
        # G is private (`kd_head_per_token` returns the KD only): its cotangent is zero.
        h, w, ht, wt = primals
        d = h.shape[-1]
        g = cotangents[0].reshape(-1, 1).astype(mx.float32) * outputs[1]
        dh = (g @ w.astype(mx.float32)).reshape(h.shape).astype(h.dtype)
        dw = (g.T @ h.reshape(-1, d).astype(mx.float32)).astype(w.dtype)
        return dh, dw, mx.zeros_like(ht), mx.zeros_like(wt)

    return lambda h, w, ht, wt: kd(h, w, ht, wt)[0]


def _head_weight(model: nn.Module) -> Callable[[], mx.array] | None:
    """The output matrix an mlx-lm decoder multiplies by (`lm_head` without a bias, else the
    tied embedding; fake-quantized in a QAT layer); None for any other layout."""
    inner = model.get("model") if isinstance(model, dict) else None
    head = model.get("lm_head") if isinstance(model, dict) else None
    if head is None and isinstance(inner, nn.Module):
        head = inner.get("embed_tokens")
    if not isinstance(head, nn.Module) or "bias" in head or "weight" not in head:
        return None
    if head["weight"].dtype not in (mx.float32, mx.float16, mx.bfloat16):
        return None  # a stock quantized layer
    effective = getattr(head, "effective_weight", None)
    return effective if callable(effective) else (lambda: head["weight"])


def hidden_and_head(model: nn.Module, inputs: mx.array) -> tuple[mx.array, mx.array]:
    """(final hidden states, output matrix) of a model `split_head` accepted."""
    return model["model"](inputs), _head_weight(model)()


def split_head(model: nn.Module) -> bool:
    """True when model(x) == h·Wᵀ for (h, W) = `hidden_and_head(model, x)` on a short input."""
    if _head_weight(model) is None or not isinstance(model.get("model"), nn.Module):
        return False
    x = mx.arange(8)[None]
    try:
        h, w = hidden_and_head(model, x)
        want, got = model(x), h @ w.T
    except Exception:  # a layout this reading does not fit: the caller keeps full logits
        return False
    return want.shape == got.shape and mx.allclose(want, got, rtol=1e-4, atol=1e-5).item()
