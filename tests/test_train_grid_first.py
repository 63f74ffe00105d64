"""`--grid-first-fraction F` (train/optim.py): the first round(F x QAT steps) steps are a
`--train grid` run's bit for bit, then the weights join with a fresh Adam at
`--weight-lr-scale` x LR; a stop past the boundary resumes exactly; F = 0 is today's run."""

from __future__ import annotations

from dataclasses import replace

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from test_train_fixtures import timeless_records, tiny_config, tiny_data_dir, train_until  # noqa: F401
from tiny_models import float_model_dir

from mlx_qat.checkpoint import load_checkpoint
from mlx_qat.prepare import is_quantizer_param
from mlx_qat.train import train
from mlx_qat.train.config import TrainConfig
from mlx_qat.train.metrics import read_metrics
from mlx_qat.train.trainer import Trainer

B, L, LR, STEPS = 4, 32, 1e-3, 6


def settings(data, out, model, **kw) -> TrainConfig:
    """A tiny learned-affine kd fine-tune of `STEPS` steps at a constant LR; eps tiny, so that
    one fresh Adam step moves each parameter by its LR (sign(g)·lr where |g| ≫ eps)."""
    base = dict(
        model=str(model), qat_fraction=1.0, tokens=STEPS * B * L, batch_size=B, seq_len=L,
        quantizer="learned_affine", objective="kd", bits=3, group_size=32, embed_bits=3,
        lr=LR, beta2=0.999, eps=1e-12, grad_clip=0.0, cooldown_fraction=0.0, warmup_steps=0,
    )  # fmt: skip
    base.update(kw)
    return tiny_config(data, out, **base)


def snapshots(cfg) -> tuple[dict, dict[int, dict[str, mx.array]]]:
    """Run `cfg`: its result and every parameter after each step ({step: {path: array}})."""
    seen: dict[int, dict[str, mx.array]] = {}

    def keep(t, step):
        seen[step] = {k: mx.array(v) for k, v in tree_flatten(t.model.parameters())}

    t = Trainer(cfg, on_step=keep)
    t.setup()
    return t.run(), seen


def split(params: dict[str, mx.array]) -> tuple[dict, dict]:
    """(the grid and the norms: what --train grid trains, the weight matrices)."""
    grid = {k: v for k, v in params.items() if is_quantizer_param(k) or "norm" in k}
    weights = {k: v for k, v in params.items() if v.ndim >= 2 and not is_quantizer_param(k)}
    return grid, weights


def test_grid_first_steps_are_train_grid_then_the_weights_join(tiny_data_dir, tmp_path):  # noqa: F811
    src, _ = float_model_dir(tmp_path / "float", vocab=512)
    # the straight-through grid gradient: the grid's own moves change codes (the transition
    # statistics below are not all 0 before the join, as they are with fixed codes)
    k, scale, ste = 3, 0.5, dict(scale_grad="ste")  # round(0.5 * 6)
    result, seen = snapshots(
        settings(tiny_data_dir, tmp_path / "first", src, grid_first_fraction=0.5,
                 weight_lr_scale=scale, **ste)
    )  # fmt: skip
    _, grid_seen = snapshots(settings(tiny_data_dir, tmp_path / "grid", src, train="grid", **ste))
    losses = [r["loss"] for r in read_metrics(tmp_path / "first", "train")]
    grid_losses = [r["loss"] for r in read_metrics(tmp_path / "grid", "train")]
    assert len(losses) == STEPS
    assert losses[:k] == grid_losses[:k]  # bit for bit, not close
    assert losses[k:] != grid_losses[k:]
    for s in range(1, k + 1):
        mine, theirs = split(seen[s])[0], split(grid_seen[s])[0]
        assert mine.keys() == theirs.keys()
        for name, v in theirs.items():
            assert mx.array_equal(mine[name], v), (s, name)
    start = {n: v for n, v in mx.load(str(src / "model.safetensors")).items() if v.ndim >= 2}
    assert len(start) == 15  # 14 linear layers and the tied embedding
    for s in range(1, k + 1):
        weights = split(seen[s])[1]
        assert weights.keys() == start.keys()
        for name, v in weights.items():
            assert mx.array_equal(v, start[name]), (s, name)
    # the first joint step is a fresh Adam's at weight_lr_scale x LR: every weight moves by it
    moved = split(seen[k + 1])[1]
    step = max(float(mx.abs(moved[n] - start[n]).max()) for n in start)
    np.testing.assert_allclose(step, scale * LR, rtol=1e-3)
    joins = read_metrics(tmp_path / "first", "weights_join")
    assert [(r["step"], r["weight_lr_scale"]) for r in joins] == [(k, scale)]
    assert result["weights_join_step"] == k
    # the transition statistics continue across the join: K = m·K + (1 - m)·k at every step
    train_records = read_metrics(tmp_path / "first", "train")
    ema = [0.0] + [r["transition_rate_ema"] for r in train_records]
    rate = [0.0] + [r["transition_rate"] for r in train_records]
    assert ema[k] > 0
    for s in range(1, STEPS + 1):
        np.testing.assert_allclose(ema[s], 0.99 * ema[s - 1] + 0.01 * rate[s], rtol=1e-5)


@pytest.mark.parametrize("fraction, join", [(0.375, 3), (0.5, 4)])
def test_grid_first_resumes_exactly(tiny_data_dir, tmp_path, fraction, join):  # noqa: F811
    """Stopped at step 5 and resumed from the step-4 checkpoint, saved after the weights
    joined (at 3) or just before they join (at 4): the uninterrupted run's losses, final
    weights and optimizer state, bit for bit."""
    src, _ = float_model_dir(tmp_path / "float", vocab=512)
    kw = dict(tokens=8 * B * L, save_every=2, grid_first_fraction=fraction, weight_lr_scale=0.5)
    ref = settings(tiny_data_dir, tmp_path / "ref", src, **kw)
    train(ref)
    cut = settings(tiny_data_dir, tmp_path / "cut", src, **kw)
    train_until(cut, 5)
    assert load_checkpoint(tmp_path / "cut").state["step"] == 4
    train(replace(cut, resume=True))
    assert timeless_records(cut.out, "train") == timeless_records(ref.out, "train")
    assert [r["step"] for r in read_metrics(tmp_path / "cut", "weights_join")] == [join]
    a, b = load_checkpoint(tmp_path / "cut"), load_checkpoint(tmp_path / "ref")
    for k, v in b.weights.items():
        assert mx.array_equal(a.weights[k], v), k
    assert a.optimizer_state.keys() == b.optimizer_state.keys()
    for k, v in b.optimizer_state.items():
        assert mx.array_equal(a.optimizer_state[k], v), k


def test_grid_first_zero_is_todays_run(tiny_data_dir, tmp_path):  # noqa: F811
    src, _ = float_model_dir(tmp_path / "float", vocab=512)
    kw = dict(tokens=3 * B * L, weight_lr_scale=0.5)
    today = settings(tiny_data_dir, tmp_path / "today", src, **kw)
    zero = settings(tiny_data_dir, tmp_path / "zero", src, grid_first_fraction=0.0, **kw)
    assert zero.hash() == today.hash()
    assert TrainConfig().hash() == "8e66cf49c7511190"  # every existing run keeps its hash
    assert settings(tiny_data_dir, tmp_path / "x", src, grid_first_fraction=0.5).hash() != (
        settings(tiny_data_dir, tmp_path / "x", src).hash()
    )
    train(today)
    train(zero)
    assert timeless_records(zero.out, "train") == timeless_records(today.out, "train")
    assert read_metrics(tmp_path / "zero", "weights_join") == []
    start = mx.load(str(src / "model.safetensors"))
    a, b = load_checkpoint(tmp_path / "zero"), load_checkpoint(tmp_path / "today")
    for k, v in start.items():  # the weights trained from the first step
        assert v.ndim < 2 or not mx.array_equal(a.weights[k], v), k
    for k, v in b.weights.items():
        assert mx.array_equal(a.weights[k], v), k


def test_grid_first_refuses_what_it_cannot_do(tiny_data_dir, tmp_path):  # noqa: F811
    src, _ = float_model_dir(tmp_path / "float", vocab=512)
    with pytest.raises(ValueError, match="grid_first_fraction=1.5: must be in"):
        settings(tiny_data_dir, tmp_path / "a", src, grid_first_fraction=1.5)
    with pytest.raises(ValueError, match="0 with --train grid"):
        settings(tiny_data_dir, tmp_path / "b", src, grid_first_fraction=0.5, train="grid")
    with pytest.raises(ValueError, match="0 with --lr-control trs"):
        settings(tiny_data_dir, tmp_path / "c", src, grid_first_fraction=0.5, lr_control="trs")
    with pytest.raises(ValueError, match="give --qat-fraction 1"):
        cfg = settings(tiny_data_dir, tmp_path / "d", src, grid_first_fraction=0.5,
                       qat_fraction=0.5)  # fmt: skip
        Trainer(cfg).setup()
