"""A compiled QAT training step on MLX's default device, through `prepare`, per quantizer.

On a Mac the default device is the GPU: `prepare` self-checks the Metal kernels the run uses,
and every step runs the fused forward (and, for lsq / learned_affine, backward) kernels; this
is what makes a plain `pytest` on a Mac train through them. On a CPU-only MLX (as on the
Linux machines that run this suite) the same test runs the CPU fast path (minmax) and the
pure-MLX LSQ / learned-affine paths; it asserts which path it took either way.
"""

from __future__ import annotations

from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten
from tiny_models import tiny_model

from mlx_qat import QATConfig, prepare, qat_layers
from mlx_qat.kernels import gpu
from mlx_qat.quant import affine_cpu, backend


@pytest.fixture
def calls(monkeypatch):
    """How often the fused launches and the CPU fast path were called (while tracing)."""
    count = {"gpu.forward": 0, "gpu.backward": 0, "affine_cpu": 0}

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            count[name] += 1
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(gpu, "forward", spy("gpu.forward", gpu.forward))
    monkeypatch.setattr(gpu, "backward", spy("gpu.backward", gpu.backward))
    cpu_path = spy("affine_cpu", affine_cpu.fake_quant_minmax)
    monkeypatch.setattr(affine_cpu, "fake_quant_minmax", cpu_path)
    return count


def _quantizer_params(model) -> dict[str, np.ndarray]:
    flat = tree_flatten(model.trainable_parameters())
    return {k: np.array(v.astype(mx.float32)) for k, v in flat if ".quantizer." in k}


@pytest.mark.parametrize("quantizer", ["minmax", "lsq", "learned_affine"])
def test_compiled_qat_step_on_the_default_device(quantizer, calls):
    model = tiny_model("llama", seed=3)
    prepare(model, QATConfig.with_bits(4, quantizer=quantizer), enabled=True)
    fused = backend.fused_backend()
    if mx.default_device() == mx.gpu and backend.machine_backend() is not None:
        assert fused is not None, "prepare's self-check turned the fused kernels off"
    for k in calls:
        calls[k] = 0  # the self-check's launches do not count
    before = _quantizer_params(model)

    tokens = mx.random.randint(0, 256, (8, 33), key=mx.random.key(4))
    opt = optim.Adam(learning_rate=1e-2)
    state = [model.state, opt.state]

    def loss_fn(m):
        logits = m(tokens[:, :-1]).astype(mx.float32)
        return nn.losses.cross_entropy(logits, tokens[:, 1:], reduction="mean")

    @partial(mx.compile, inputs=state, outputs=state)
    def step():
        loss, grads = nn.value_and_grad(model, loss_fn)(model)
        opt.update(model, grads)
        return loss

    losses = [step().item() for _ in range(16)]
    assert losses[-1] < 0.85 * losses[0], losses

    # The path the steps took: the fused kernels on a GPU, else the CPU path / the reference.
    if fused:
        assert calls["gpu.forward"] > 0 and calls["affine_cpu"] == 0, calls
        assert (calls["gpu.backward"] > 0) == (quantizer != "minmax"), calls
    else:
        assert calls["gpu.forward"] == calls["gpu.backward"] == 0, calls
        assert (calls["affine_cpu"] > 0) == (quantizer == "minmax"), calls
    if quantizer != "minmax":  # the quantizer's own gradients reached its parameters
        after = _quantizer_params(model)
        assert before and any(not np.array_equal(before[k], after[k]) for k in before)

    # ŵ on the default device == MLX's CPU dequantization of the grid export writes.
    layers = list(qat_layers(model))
    assert layers
    for path, layer in layers:
        got = layer.effective_weight()
        with mx.stream(mx.cpu):
            grid = layer.quantizer.grid(layer["weight"])
            spec = layer.spec
            ref = mx.dequantize(*grid, group_size=spec.group_size, bits=spec.bits)
            ref = ref.astype(got.dtype)
            mx.eval(ref)
        assert mx.array_equal(got, ref).item(), path
