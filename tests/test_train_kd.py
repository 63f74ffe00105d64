"""The step's KD loss (`train/kd.py`): the value of `loss.kl_to_teacher` times T², and the
closed-form gradient T·(p_s − p_t), computed in token chunks — against autodiff of the
unchunked value and a numpy transcription."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlx_qat.eval_modes import kl_to_teacher
from mlx_qat.train import kd


def np_softmax(z, t):
    z = z.astype(np.float64) / t
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("temp", [0.5, 1.0, 2.0, 4.0])
def test_value_and_gradient_in_chunks_equal_the_unchunked_autodiff(monkeypatch, temp):
    monkeypatch.setattr(kd, "CHUNK", 3 * 97)  # 3 tokens a chunk: 7 chunks, the last short
    zs = 3 * mx.random.normal((4, 5, 97), key=mx.random.key(0))
    zt = 3 * mx.random.normal((4, 5, 97), key=mx.random.key(1))
    w = mx.random.uniform(shape=(4, 5), key=mx.random.key(2))  # a cotangent that is not 1

    def ours(z):
        return (w * kd.kd_per_token(z, zt, temp)).sum()

    def reference(z):
        return (w * temp**2 * kl_to_teacher(z, zt, temp)).sum()

    v, g = mx.value_and_grad(ours)(zs)
    rv, rg = mx.value_and_grad(reference)(zs)
    np.testing.assert_allclose(v.item(), rv.item(), rtol=1e-6)
    np.testing.assert_allclose(np.array(g), np.array(rg), rtol=1e-4, atol=1e-7)
    want = (
        temp
        * np.array(w)[..., None]
        * (np_softmax(np.array(zs), temp) - np_softmax(np.array(zt), temp))
    )
    np.testing.assert_allclose(np.array(g), want, rtol=1e-4, atol=1e-7)


def test_compiled_step_gradient_and_no_teacher_gradient():
    zs = mx.random.normal((2, 3, 50), key=mx.random.key(3))
    zt = mx.random.normal((2, 3, 50), key=mx.random.key(4))

    def loss(z, t):
        return kd.kd_per_token(z, mx.stop_gradient(t), 2.0).mean()

    g = mx.compile(mx.grad(loss, argnums=(0, 1)))(zs, zt)
    assert float(mx.abs(g[0]).max()) > 0
    assert float(mx.abs(g[1]).max()) == 0.0


@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_head_chunks_equal_the_full_logit_loss_and_its_gradients(monkeypatch, temp):
    monkeypatch.setattr(kd, "CHUNK", 2 * 97)  # 2 tokens a chunk: 10 chunks
    keys = mx.random.split(mx.random.key(5), 5)
    h, ht = mx.random.normal((4, 5, 16), key=keys[0]), mx.random.normal((4, 5, 12), key=keys[1])
    w, wt = mx.random.normal((97, 16), key=keys[2]), mx.random.normal((97, 12), key=keys[3])
    c = mx.random.uniform(shape=(4, 5), key=keys[4])

    def ours(h, w):
        return (c * kd.kd_head_per_token(h, w, ht, wt, temp)).sum()

    def reference(h, w):
        return (c * temp**2 * kl_to_teacher(h @ w.T, ht @ wt.T, temp)).sum()

    v, (gh, gw) = mx.value_and_grad(ours, argnums=(0, 1))(h, w)
    rv, (rh, rw) = mx.value_and_grad(reference, argnums=(0, 1))(h, w)
    np.testing.assert_allclose(v.item(), rv.item(), rtol=1e-5)
    np.testing.assert_allclose(np.array(gh), np.array(rh), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.array(gw), np.array(rw), rtol=1e-4, atol=1e-6)


def test_head_value_near_the_teacher():
    """A fine-tune's regime (student logits within ~0.05 of the teacher's, KL ~1e-4 nats a
    token, 2,000 ids): the head's direct-form value (the logged loss) stays within 2e-5 nats a
    token of T²·`kl_to_teacher` (lse rounding), and its gradient is the closed form
    T·(p_s − p_t) pushed through h·Wᵀ."""
    keys = mx.random.split(mx.random.key(6), 3)
    ht, w = mx.random.normal((2, 8, 64), key=keys[0]), mx.random.normal((2000, 64), key=keys[1])
    h = ht + 0.005 * mx.random.normal(ht.shape, key=keys[2])
    got = kd.kd_head_per_token(h, w, ht, w, 2.0)
    want = 4.0 * kl_to_teacher(h @ w.T, ht @ w.T, 2.0)
    assert 1e-5 < float(want.mean()) < 1e-2
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=0, atol=2e-5)
    gh = mx.grad(lambda h: kd.kd_head_per_token(h, w, ht, w, 2.0).sum())(h)
    p_s, p_t = np_softmax(np.array(h @ w.T), 2.0), np_softmax(np.array(ht @ w.T), 2.0)
    np.testing.assert_allclose(np.array(gh), 2.0 * (p_s - p_t) @ np.array(w), atol=1e-5)


def test_split_head_accepts_mlx_lm_decoders_and_refuses_other_heads():
    import mlx.nn as nn
    from tiny_models import tiny_model

    from mlx_qat import QATConfig, QuantSpec, prepare

    for tie in (True, False):
        m = tiny_model("llama", seed=3, tie=tie, vocab=256)
        assert kd.split_head(m)
        spec = QuantSpec("affine", 4, 32)
        prepare(m, QATConfig(spec, spec, quantizer="learned_affine"))
        assert kd.split_head(m)  # fake quant on: the head's ŵ is the effective weight

    class Scaled(nn.Module):  # a logit scale after the head (as some mlx-lm models have)
        def __init__(self, inner):
            super().__init__()
            self.model, self.lm_head = inner.model, inner.lm_head

        def __call__(self, x):
            return 0.5 * self.lm_head(self.model(x))

    assert not kd.split_head(Scaled(tiny_model("llama", seed=3, tie=False, vocab=256)))
