"""LR schedules: phase boundaries and closed-form values for both pipelines and all shapes."""

from __future__ import annotations

import math

import pytest

from mlx_qat.train.config import TrainConfig
from mlx_qat.train.phase_plan import make_plan
from mlx_qat.train.schedules import decay_factor, lr_curve

ETA = 1e-2


def plan_for(total=100, f=0.3, pipeline="fused", shape="linear", c=0.2, warmup=5, **kw):
    # tokens_per_step = 1 * 1 * 1 so steps == tokens.
    cfg = TrainConfig(
        tokens=total,
        batch_size=1,
        seq_len=1,
        qat_fraction=f,
        pipeline=pipeline,
        cooldown_shape=shape,
        cooldown_fraction=c,
        warmup_steps=warmup,
        lr=ETA,
        **kw,
    )
    return make_plan(cfg, 1000, 800, 500.0)


@pytest.mark.parametrize(
    "shape, t, expected",
    [
        ("linear", 0.25, 0.75),
        ("cosine", 0.5, 0.5),
        ("cosine", 1 / 3, 0.75),
        ("1-sqrt", 0.25, 0.5),
        ("1-sqrt", 1.0, 0.0),
        ("linear", 0.0, 1.0),
    ],
)
def test_decay_shapes(shape, t, expected):
    assert decay_factor(shape, t) == pytest.approx(expected)


def test_unknown_shape_names_the_choices():
    with pytest.raises(ValueError, match="linear, cosine, 1-sqrt"):
        decay_factor("exp", 0.5)


def test_fused_boundaries():
    p = plan_for(total=100, f=0.3, pipeline="fused", shape="linear")
    assert (p.fp_steps, p.qat_steps, p.cooldown_steps, p.warmup_steps) == (70, 30, 20, 5)
    assert p.phase(69) == "fp" and p.phase(70) == "qat"
    assert p.lr_at(0) == pytest.approx(ETA / 5)  # warmup ramps from 0: (j+1)/W
    assert p.lr_at(4) == pytest.approx(ETA)
    assert p.lr_at(69) == pytest.approx(ETA)  # last FP step: no FP cooldown
    assert p.lr_at(70) == pytest.approx(ETA)  # QAT starts at the peak
    assert p.lr_at(79) == pytest.approx(ETA)  # hold until D_qat - c*D
    assert p.lr_at(80) == pytest.approx(ETA)  # first decay step, t = 0
    assert p.lr_at(90) == pytest.approx(ETA * 0.5)  # t = 10/20
    assert p.lr_at(99) == pytest.approx(ETA / 20)  # t = 19/20


def test_fused_short_qat_phase_decays_over_all_of_it():
    p = plan_for(total=100, f=0.1, pipeline="fused", shape="1-sqrt")
    assert (p.fp_steps, p.cooldown_steps) == (90, 10)  # min(D_qat, c*D) = min(10, 20)
    assert p.lr_at(89) == pytest.approx(ETA)
    assert p.lr_at(90) == pytest.approx(ETA)
    assert p.lr_at(94) == pytest.approx(ETA * (1 - math.sqrt(0.4)))


def test_classic_boundaries():
    p = plan_for(total=100, f=0.3, pipeline="classic", shape="cosine", qat_warmup_fraction=0.1)
    assert (p.fp_steps, p.qat_steps, p.cooldown_steps, p.qat_warmup_steps) == (70, 30, 14, 3)
    assert p.lr_at(55) == pytest.approx(ETA)  # constant
    assert p.lr_at(56) == pytest.approx(ETA)  # FP cooldown starts at 70 - 14, t = 0
    assert p.lr_at(63) == pytest.approx(ETA * 0.5)  # t = 7/14: cos(pi/2)
    assert p.lr_at(69) < 0.02 * ETA  # end of the FP cooldown
    assert p.lr_at(70) == pytest.approx(ETA / 3)  # QAT re-warmup from 0 over 3 steps
    assert p.lr_at(72) == pytest.approx(ETA)
    assert p.lr_at(73) == pytest.approx(ETA)  # decay over the 27 remaining steps, t = 0
    assert p.lr_at(73 + 9) == pytest.approx(ETA * 0.75)  # t = 1/3


def test_min_lr_floor():
    p = plan_for(total=100, f=0.3, pipeline="fused", shape="linear", min_lr=ETA / 10)
    assert p.lr_at(90) == pytest.approx(ETA / 10 + (ETA - ETA / 10) * 0.5)
    assert min(lr_curve(p)[10:]) >= ETA / 10


@pytest.mark.parametrize("pipeline", ["fused", "classic"])
def test_ptq_only_f0_has_an_fp_cooldown(pipeline):
    p = plan_for(total=100, f=0.0, pipeline=pipeline, shape="linear")
    assert (p.fp_steps, p.qat_steps) == (100, 0)
    assert p.switch_step == 100  # never reached: no QAT phase
    assert p.cooldown_steps == 20
    assert p.lr_at(79) == pytest.approx(ETA)
    assert p.lr_at(90) == pytest.approx(ETA * 0.5)


def test_qat_from_scratch_f1():
    fused = plan_for(total=100, f=1.0, pipeline="fused", shape="linear")
    assert (fused.fp_steps, fused.qat_steps) == (0, 100)
    assert fused.phase(0) == "qat"
    assert fused.lr_at(0) == pytest.approx(ETA / 5)  # the warmup happens in QAT
    assert fused.lr_at(90) == pytest.approx(ETA * 0.5)
    classic = plan_for(total=100, f=1.0, pipeline="classic", shape="linear")
    assert classic.qat_warmup_steps == 5  # at least the initial warmup
    assert classic.lr_at(0) == pytest.approx(ETA / 5)
    assert classic.lr_at(5) == pytest.approx(ETA)


def test_schedule_is_continuous_at_the_fused_switch():
    p = plan_for(total=1000, f=0.5, pipeline="fused", shape="1-sqrt")
    curve = lr_curve(p)
    assert curve[p.switch_step - 1] == curve[p.switch_step] == ETA
    assert all(a >= b for a, b in zip(curve[p.warmup_steps :], curve[p.warmup_steps + 1 :]))


def _fixed_by_hand(total=100, warmup=5, decay=20):
    """The fixed cooldown's LR, written out: warmup (j+1)/W·η, η, then η·(1 − t) over the
    last `decay` steps (linear shape), whatever f is."""
    out = []
    for s in range(total):
        if s < warmup:
            out.append(ETA * (s + 1) / warmup)
        elif s < total - decay:
            out.append(ETA)
        else:
            out.append(ETA * (1 - (s - (total - decay)) / decay))
    return out


def test_fixed_cooldown_short_qat_phase_starts_inside_the_decay():
    p = plan_for(total=100, f=0.1, shape="linear", cooldown_mode="fixed")
    assert (p.fp_steps, p.qat_steps, p.cooldown_steps) == (90, 10, 20)
    assert lr_curve(p) == pytest.approx(_fixed_by_hand())
    assert p.lr_at(89) == pytest.approx(ETA * 0.55)  # FP, already decaying: t = 9/20
    assert p.phase(89) == "fp" and p.phase(90) == "qat"
    assert p.lr_at(90) == pytest.approx(ETA * 0.5)  # QAT starts mid-decay, t = 10/20
    # the default ("fused") ties the decay to the 10 QAT steps instead
    assert plan_for(total=100, f=0.1, shape="linear").lr_at(90) == pytest.approx(ETA)


def test_fixed_cooldown_long_qat_phase_holds_the_peak_first():
    p = plan_for(total=100, f=0.35, shape="linear", cooldown_mode="fixed")
    assert (p.fp_steps, p.qat_steps, p.cooldown_steps) == (65, 35, 20)
    assert lr_curve(p) == pytest.approx(_fixed_by_hand())
    assert p.lr_at(65) == p.lr_at(79) == pytest.approx(ETA)  # QAT holds η for 15 steps
    assert p.lr_at(90) == pytest.approx(ETA * 0.5)


@pytest.mark.parametrize("shape", ["linear", "1-sqrt"])
def test_fixed_cooldown_gives_every_fraction_the_same_lr_sequence(shape):
    fs = (0.0, 0.025, 0.05, 0.1, 0.2, 0.3, 0.6, 1.0)
    curves = {f: lr_curve(plan_for(total=400, f=f, shape=shape, cooldown_mode="fixed")) for f in fs}
    assert all(curves[f] == curves[0.0] for f in fs)  # exactly, not approximately
    # ... which is the pure-FP run's, the same in either mode
    assert curves[0.0] == lr_curve(plan_for(total=400, f=0.0, shape=shape))


def test_classic_pipeline_ignores_the_cooldown_mode():
    for f in (0.1, 0.3):
        a = plan_for(total=100, f=f, pipeline="classic", shape="cosine")
        b = plan_for(total=100, f=f, pipeline="classic", shape="cosine", cooldown_mode="fixed")
        assert lr_curve(a) == lr_curve(b)
