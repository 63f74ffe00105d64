"""Transition-rate scheduling (mlx_qat.train.trs): the controller against a hand computation,
K tracking a constant target on a tiny model, a constant U = AdamW at lr = U bit for bit,
U = 0 = quantized weights frozen exactly, frozen quantizer scales, exact resume, gradient
accumulation, and the metrics the trainer writes."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from test_train_fixtures import tiny_config, tiny_data_dir  # noqa: F401

from mlx_qat.checkpoint import build_model, load_checkpoint
from mlx_qat.prepare import prepare, qat_layers
from mlx_qat.qat_config import QATConfig
from mlx_qat.quant import QuantSpec
from mlx_qat.train import Trainer, train
from mlx_qat.train.config import TrainConfig
from mlx_qat.train.metrics import read_metrics
from mlx_qat.train.optim import build_optimizer, set_lr
from mlx_qat.train.step import make_step
from mlx_qat.train.transitions import Transitions
from mlx_qat.train.trs import TRS, QATUpdate, TRSSettings

sys.path.insert(0, str(Path(__file__).parent))
from test_transitions import Two  # noqa: E402
from tiny_models import tiny_model  # noqa: E402


def two(bits_b: int = 4):
    model = Two()
    cfg = QATConfig(weights=QuantSpec("affine", 4, 32), overrides={"b": {"bits": bits_b}})
    prepare(model, cfg, enabled=True)
    return model


def test_controller_against_a_hand_computation():
    """U ← max(0, U + η(R(t) − K)), R(t) = ½R0(1 + cos(π min(t/T, 1))), R0 = λ√bits: six steps
    with T = 4, through a clamp at 0 and past the end of the cosine."""
    lam, u0, eta, steps = 0.01, 1e-3, 2e-3, 4
    trs = TRS(Transitions(two()), TRSSettings(lam, u0, eta, steps))
    r0 = lam * math.sqrt(4)
    u, got, want = u0, [], []
    for t, k_ema in enumerate([0.0, 0.05, 0.9, 0.0, 0.0, 0.01]):
        trs.stats.state["ema"] = mx.array(k_ema)
        trs.control()
        r = 0.5 * r0 * (1 + math.cos(math.pi * min(t / steps, 1.0)))
        u = max(0.0, u + eta * (r - k_ema))
        got.append((trs.state["U"].item(), trs.state["target"].item()))
        want.append((u, r))
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-5, atol=1e-10)
    assert got[2][0] == 0.0 and got[5][0] == 0.0  # clamped
    assert want[3][0] > 0 and got[4][1] == pytest.approx(0.0, abs=1e-12)
    assert trs.state["t"].item() == 6


def test_targets_per_layer_and_the_weighted_global_one():
    """Layer b at 2 bits: R0 = λ√2 there, λ√4 on layer a (1024 weights vs 256); the global R0
    is their weight-count-weighted mean; per-layer U moves with each layer's own K."""
    lam = 0.005
    stats = Transitions(two(bits_b=2))
    glob = TRS(stats, TRSSettings(lam, 1e-3, 1e-3, 10))
    assert glob.state["target"].item() == pytest.approx(
        lam * (1024 * 2 + 256 * math.sqrt(2)) / 1280
    )
    layer = TRS(stats, TRSSettings(lam, 1e-3, 1e-3, 10, "layer"))
    np.testing.assert_allclose(np.array(layer.state["target"]), [lam * 2, lam * math.sqrt(2)])
    stats.state["ema_layers"] = mx.array([0.0, 1.5])
    layer.control()
    np.testing.assert_allclose(
        np.array(layer.state["U"]), [1e-3 + 1e-3 * lam * 2, 0.0], rtol=1e-6, atol=1e-12
    )
    with pytest.raises(ValueError, match="trs_granularity"):
        TRS(stats, TRSSettings(lam, 1e-3, 1e-3, 10, "row"))


def test_the_rate_tracks_a_constant_target_on_a_tiny_model():
    """R held at R0 = 0.005·√4 = 1% (T huge), m = 0.9, U0 = η = 1e-3 (the rate at U0 starts
    ~14x too high): after 150 steps the EMA K stays within ±25% of R, its mean within ±10%."""
    model = tiny_model(vocab=256)
    prepare(model, QATConfig(weights=QuantSpec("affine", 4, 64)), enabled=True)
    opt = build_optimizer(model, TrainConfig(lr=1e-3))
    set_lr(opt, 1e-3)
    stats = Transitions(model, 0.9)
    trs = TRS(stats, TRSSettings(0.005, 1e-3, 1e-3, 10**9))
    step = make_step(model, opt, update=QATUpdate(stats, trs))
    data = mx.random.randint(0, 256, (64, 4, 17), key=mx.random.key(0))
    ks = []
    for i in range(250):
        step([data[i % 64]])
        mx.eval(model.state, opt.state, stats.state, trs.state)
        ks.append(stats.state["ema"].item())
    r = trs.state["target"].item()
    assert r == pytest.approx(0.01, rel=1e-6)
    late = np.array(ks[150:])
    assert np.abs(late / r - 1).max() < 0.25, late
    assert abs(late.mean() / r - 1) < 0.1, late.mean()
    assert ks[0] > 0.01  # it started far above the target (k ≈ 14%)


def _weights(run) -> dict:
    return load_checkpoint(run).weights


def test_a_constant_u_is_adamw_at_that_lr_bit_for_bit(tiny_data_dir, tmp_path):  # noqa: F811
    """η = 0 keeps U = U0 = the (constant) scheduled LR: the run equals lr_control=schedule
    with that constant LR in every loss and every weight; and U0 = 0 leaves every quantized
    weight exactly where the switch put it while the norms keep training."""
    kw = dict(warmup_steps=0, cooldown_fraction=0.0, lr=2e-3, quantizer="minmax")
    ref = train(tiny_config(tiny_data_dir, tmp_path / "ref", **kw))
    trs = train(tiny_config(tiny_data_dir, tmp_path / "trs", lr_control="trs", trs_eta=0.0, **kw))
    recs = read_metrics(tmp_path / "trs", "train")
    assert {r["trs_u"] for r in recs if r["phase"] == "qat"} == {np.float32(2e-3).item()}
    losses = [[r["loss"] for r in read_metrics(tmp_path / run, "train")] for run in ("ref", "trs")]
    assert losses[0] == losses[1]
    a, b = _weights(tmp_path / "ref"), _weights(tmp_path / "trs")
    assert all(mx.array_equal(a[k], b[k]) for k in a)
    assert ref["eval"] == trs["eval"]
    # U = 0
    train(tiny_config(tiny_data_dir, tmp_path / "zero", lr_control="trs", trs_u0=0.0, **kw))
    switch = load_checkpoint(tmp_path / "zero" / "checkpoints" / "step_00000030").weights
    end = _weights(tmp_path / "zero")
    paths = {
        p for p, _ in qat_layers(build_model(tmp_path / "zero" / "checkpoints" / "step_00000040"))
    }
    quantized = [f"{p}.weight" for p in paths]
    assert len(quantized) == 15
    assert all(mx.array_equal(switch[k], end[k]) for k in quantized)
    assert not mx.array_equal(switch["model.norm.weight"], end["model.norm.weight"])


@pytest.mark.parametrize("quantizer", ["lsq", "learned_affine"])
def test_quantizer_scales_frozen_under_trs(quantizer, tiny_data_dir, tmp_path):  # noqa: F811
    """Under TRS the learnable grid stays where the switch initialised it, through every QAT
    step; under the schedule it trains."""
    at_switch = {}

    def record(t, step):
        if step == t.plan.fp_steps + 1:  # one QAT step done: the switch's values, or moved
            at_switch.update(_quantizer_params(t.model))

    ends = {}
    for lc in ("trs", "schedule"):
        at_switch.clear()
        cfg = tiny_config(tiny_data_dir, tmp_path / lc, quantizer=quantizer, lr_control=lc)
        t = Trainer(cfg, on_step=record)
        t.setup()
        init = {}
        switch = t.switch

        def switch_and_record(switch=switch, t=t, init=init):
            switch()
            init.update(_quantizer_params(t.model))

        t.switch = switch_and_record
        t.run()
        end = _quantizer_params(t.model)
        same = [mx.array_equal(init[k], end[k]) and mx.array_equal(init[k], at_switch[k])
                for k in init]  # fmt: skip
        ends[lc] = (len(init), all(same), any(same))
    assert ends["trs"] == (30 if quantizer == "learned_affine" else 15, True, True)
    assert ends["schedule"][2] is False  # every grid moved when it trains


def _quantizer_params(model) -> dict:
    return {k: v for k, v in tree_flatten(model.parameters()) if ".quantizer." in k}


class _Stop(Exception):
    pass


def test_resume_with_trs_is_exact(tiny_data_dir, tmp_path):  # noqa: F811
    """A run stopped at step 37 (checkpoint at 35, QAT phase) and resumed repeats the
    uninterrupted run: losses, transition rates, U, weights and the controller's state."""
    kw = dict(
        lr_control="trs", trs_granularity="layer", quantizer="learned_affine", save_every=5,
        trs_momentum=0.9,
    )  # fmt: skip
    train(tiny_config(tiny_data_dir, tmp_path / "ref", **kw))

    def stop(t, step):
        if step == 37:
            raise _Stop

    with pytest.raises(_Stop):
        train(tiny_config(tiny_data_dir, tmp_path / "cut", **kw), on_step=stop)
    assert load_checkpoint(tmp_path / "cut").step == 35
    train(tiny_config(tiny_data_dir, tmp_path / "cut", resume=True, **kw))

    def curve(run):
        keep = ("step", "loss", "transition_rate", "transition_rate_ema", "trs_u", "trs_target",
                "transition_rate_layers", "trs_u_layers", "transition_distance")  # fmt: skip
        return [{k: r.get(k) for k in keep} for r in read_metrics(run, "train")]

    a, b = curve(tmp_path / "cut"), curve(tmp_path / "ref")
    assert a == b and len(a) == 40 and a[-1]["trs_u"] is not None
    assert len({r["trs_u"] for r in a[30:]}) > 5  # U moved
    assert all(r["transition_rate"] is None for r in a[:30])  # FP phase: nothing to count
    assert len(a[-1]["transition_rate_layers"]) == len(a[-1]["trs_u_layers"]) == 15
    pytest.importorskip("matplotlib")
    from mlx_qat.train.plot import plot_run

    assert plot_run(tmp_path / "ref").stat().st_size > 0  # with the transition-rate panel
    ca, cb = load_checkpoint(tmp_path / "cut"), load_checkpoint(tmp_path / "ref")
    assert ca.state["qat_update"] == cb.state["qat_update"]
    assert ca.state["qat_update"]["trs"]["t"] == 10
    assert all(mx.array_equal(ca.weights[k], cb.weights[k]) for k in cb.weights)
    assert all(mx.array_equal(ca.optimizer_state[k], v) for k, v in cb.optimizer_state.items())


def test_grad_accumulation_counts_once_per_optimizer_step(tiny_data_dir, tmp_path):  # noqa: F811
    """2 micro-batches of 2 sequences = 1 batch of 4: the controller advances once per
    optimizer step, and the statistics match the single batch's (float32 summation order
    aside)."""
    kw = dict(lr_control="trs", quantizer="minmax")
    train(tiny_config(tiny_data_dir, tmp_path / "one", **kw))
    train(tiny_config(tiny_data_dir, tmp_path / "acc", batch_size=2, grad_accum=2, **kw))
    one, acc = (load_checkpoint(tmp_path / r).state["qat_update"] for r in ("one", "acc"))
    assert one["trs"]["t"] == acc["trs"]["t"] == 10
    np.testing.assert_allclose(acc["trs"]["U"], one["trs"]["U"], rtol=1e-3)
    np.testing.assert_allclose(
        acc["transitions"]["ema"], one["transitions"]["ema"], rtol=0.05, atol=1e-4
    )


@pytest.mark.distributed
def test_two_processes_keep_identical_replicas_and_controller(tiny_data_dir, tmp_path):  # noqa: F811
    """TRS on 2 ring processes (mlx.launch), per-layer U, learned affine, 2 accumulated
    micro-batches: both ranks end with the same weights bit for bit (U steers the update, so a
    rank whose statistics differed would drift), and rank 0's controller state matches one
    process with the same global batch (t exactly; U within float32 summation order)."""
    from test_distributed_train import run_driver

    kw = dict(
        tokens=16 * 2 * 4 * 32, grad_accum=2, qat_fraction=0.5, quantizer="learned_affine",
        lr_control="trs", trs_granularity="layer", trs_momentum=0.8, final_eval_batches=2,
    )  # fmt: skip
    cfg = tiny_config(tiny_data_dir, tmp_path / "dist", **kw)
    proc = run_driver(tmp_path / "d", {"T": cfg}, {"T": [16]})
    out, _ = proc.communicate(timeout=300)
    assert "exited with code" not in out, out
    w0, w1 = (mx.load(str(tmp_path / "d" / f"T-r{r}-s16.safetensors")) for r in (0, 1))
    assert all(mx.array_equal(w0[k], w1[k]).item() for k in w0)
    train(tiny_config(tiny_data_dir, tmp_path / "single", **kw))
    a, b = (load_checkpoint(tmp_path / r).state["qat_update"] for r in ("dist", "single"))
    assert a["trs"]["t"] == b["trs"]["t"] == 8
    np.testing.assert_allclose(a["trs"]["U"], b["trs"]["U"], rtol=1e-3)


def test_u0_of_a_qat_phase_that_starts_in_the_warmup_is_the_peak_lr():
    """QAT from the first step (a fine-tune): U0 is the LR the warmup reaches, not lr/W."""
    from mlx_qat.train.phase_plan import make_plan
    from mlx_qat.train.trs import trs_u0

    cfg = TrainConfig(tokens=100 * 8 * 128, qat_fraction=1.0, warmup_steps=10, lr=3e-3)
    plan = make_plan(cfg, 10_000, 8_000, 20_000.0)
    assert plan.fp_steps == 0 and plan.lr_at(0) < 1e-3
    assert trs_u0(cfg, plan) == pytest.approx(3e-3)
    # an FP phase past the warmup: U0 is the LR at the switch, as before
    cfg = TrainConfig(tokens=100 * 8 * 128, qat_fraction=0.5, warmup_steps=10, lr=3e-3)
    plan = make_plan(cfg, 10_000, 8_000, 20_000.0)
    assert trs_u0(cfg, plan) == pytest.approx(plan.lr_at(plan.fp_steps))
