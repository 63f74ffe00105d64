"""The distillation loss of the training step, with a closed-form gradient, in token chunks.

Per target token, with z_s the student's and z_t the teacher's logits over V ids and
p^T = softmax(z / T):

    KD = T² · KL(p_t^T ‖ p_s^T)                   value: `loss.kl_to_teacher` (float32)
    ∂KD/∂z_s = T · (p_s^T − p_t^T)                 (Hinton et al., 2015)

Autodiff through `kl_to_teacher`'s numerically careful form keeps about a dozen (tokens, V)
float32 intermediates for the backward pass — 2.5 GB for 1,024 tokens of a 49k vocabulary,
more than the student's weights. Here the value and the gradient are computed `CHUNK`
elements at a time (whole tokens per chunk) inside an `mx.custom_function` whose VJP is the
closed form above, so the step holds the two logit arrays, the gradient and one chunk's
temporaries. The teacher gets no gradient (it is under `stop_gradient` in the step; its
cotangent is a lazy zero that is never evaluated).
"""

from __future__ import annotations

from functools import cache

import mlx.core as mx

from ..loss import kl_to_teacher

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
