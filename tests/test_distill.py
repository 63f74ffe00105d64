"""Distillation (train/distill.py, loss.kl_to_teacher): the KD/mix objectives against numpy,
the teacher of a from-scratch run (its weights at the switch) and of a fine-tune (the --model
weights), KL in the evaluations, exact resume, the teacher's memory."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from test_train_fixtures import (  # noqa: F401
    timeless_records,
    tiny_config,
    tiny_data_dir,
    train_until,
)

from mlx_qat.checkpoint import build_model, load_checkpoint
from mlx_qat.data import TokenBatches, eval_batches, load_bundle
from mlx_qat.eval_modes import kl_to_teacher
from mlx_qat.prepare import set_fake_quant
from mlx_qat.train import Trainer, train
from mlx_qat.train.config import TrainConfig
from mlx_qat.train.distill import float_weights, objective_loss
from mlx_qat.train.memory import step_bytes
from mlx_qat.train.metrics import read_metrics


def np_log_softmax(z: np.ndarray, t: float) -> np.ndarray:
    z = z.astype(np.float64) / t
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_kl(student: np.ndarray, teacher: np.ndarray, t: float) -> np.ndarray:
    """Per-token Σ_v p_t (log p_t − log p_s), p = softmax(z / t), in float64."""
    ls, lt = np_log_softmax(student, t), np_log_softmax(teacher, t)
    return (np.exp(lt) * (lt - ls)).sum(axis=-1)


def np_ce(logits: np.ndarray, targets: np.ndarray) -> float:
    lp = np_log_softmax(logits, 1.0)
    return float(-np.take_along_axis(lp, targets[..., None], axis=-1).mean())


@pytest.fixture
def logits():
    rng = np.random.default_rng(0)
    s = rng.normal(0, 3, (2, 5, 11)).astype(np.float32)
    t = rng.normal(0, 3, (2, 5, 11)).astype(np.float32)
    y = rng.integers(0, 11, (2, 5))
    return s, t, y


@pytest.mark.parametrize("temp", [1.0, 2.0, 0.5])
def test_kl_and_kd_equal_numpy_with_temperature(logits, temp):
    s, t, y = logits
    got = np.array(kl_to_teacher(mx.array(s), mx.array(t), temp))
    np.testing.assert_allclose(got, np_kl(s, t, temp), rtol=1e-5, atol=1e-6)
    assert (np_kl(s, t, temp) > 0.01).all()  # a real difference, not a trivial 0 == 0
    kd = objective_loss(mx.array(s), mx.array(t), mx.array(y), "kd", temp).item()
    assert kd == pytest.approx(temp**2 * np_kl(s, t, temp).mean(), rel=1e-5)
    # half-precision logits are upcast to float32 before the log-softmax
    half = kl_to_teacher(mx.array(s).astype(mx.bfloat16), mx.array(t).astype(mx.bfloat16), temp)
    assert half.dtype == mx.float32


def test_kd_is_zero_for_a_student_equal_to_its_teacher(logits):
    s, _, y = logits
    for temp in (1.0, 3.0):
        assert objective_loss(mx.array(s), mx.array(s), mx.array(y), "kd", temp).item() == 0.0
        assert float(np.abs(np.array(kl_to_teacher(mx.array(s), mx.array(s), temp))).max()) == 0


@pytest.mark.parametrize("w", [0.0, 0.3, 1.0])
def test_mix_weights_ce_and_kd(logits, w):
    s, t, y = logits
    temp = 2.0
    got = objective_loss(mx.array(s), mx.array(t), mx.array(y), "mix", temp, w).item()
    want = (1 - w) * np_ce(s, y) + w * temp**2 * np_kl(s, t, temp).mean()
    assert got == pytest.approx(want, rel=1e-5)
    ce = objective_loss(mx.array(s), None, mx.array(y), "ce").item()
    assert ce == pytest.approx(np_ce(s, y), rel=1e-5)


def test_kl_is_never_negative_and_matches_float64_at_large_temperatures():
    """At large T, KL ~ Var(z_t − z_s) / (2T²) is far below the float32 rounding of a
    log-softmax (~log V · 6e-8): the KD loss came out negative (−0.018 at T = 1000)."""
    rng = np.random.default_rng(1)
    s = rng.normal(0, 3, (3, 4096)).astype(np.float32)
    t = (s + rng.normal(0, 0.5, s.shape)).astype(np.float32)  # a student near its teacher
    for temp in (1.0, 10.0, 100.0, 1000.0):
        got = np.array(kl_to_teacher(mx.array(s), mx.array(t), temp))
        np.testing.assert_allclose(got, np_kl(s, t, temp), rtol=1e-3, err_msg=f"T={temp}")
    for temp in (1e4, 1e6, 1e9):  # beyond what a config accepts: never below 0 either
        assert (np.array(kl_to_teacher(mx.array(s), mx.array(t), temp)) >= 0).all(), temp
    y = mx.zeros(s.shape[:1], dtype=mx.int32)
    kd = objective_loss(mx.array(s), mx.array(t), y, "kd", 100.0).item()
    assert kd == pytest.approx(100.0**2 * np_kl(s, t, 100.0).mean(), rel=1e-3)
    # a gap expm1 cannot hold (z_t − z_s = 200 nats at T = 1) takes the direct form
    far = t.copy()
    far[:, 0] += 200.0
    got = np.array(kl_to_teacher(mx.array(s), mx.array(far), 1.0))
    np.testing.assert_allclose(got, np_kl(s, far, 1.0), rtol=1e-5)


def test_absurd_kd_temperature_is_refused_on_the_command_line(tiny_data_dir, tmp_path):  # noqa: F811
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "mlx_qat", "train", "--objective", "kd", "--data",
           str(tiny_data_dir), "--out", str(tmp_path / "run"), "--tokens", "256",
           "--batch-size", "2", "--seq-len", "32", "--no-compile", "--kd-temperature"]  # fmt: skip
    for temp in ("1000", "1e6", "0"):
        proc = subprocess.run([*cmd, temp], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1, proc.stderr
        assert re.search(
            r"kd_temperature=.*: must be in \(0, 100\] \(--kd-temperature", proc.stderr
        )
        assert not (tmp_path / "run").exists()
    assert TrainConfig(kd_temperature=100).kd_temperature == 100


def test_kd_gradient_is_t_times_the_probability_difference(logits):
    """d(T² KL^T)/dz_s = T (p_s^T − p_t^T) / N per token (N tokens averaged)."""
    s, t, y = logits
    temp = 2.0

    def f(z):
        return objective_loss(z, mx.array(t), mx.array(y), "kd", temp)

    g = np.array(mx.grad(f)(mx.array(s)))
    ps, pt = np.exp(np_log_softmax(s, temp)), np.exp(np_log_softmax(t, temp))
    np.testing.assert_allclose(g, temp * (ps - pt) / y.size, rtol=1e-4, atol=1e-7)


def test_bad_objective_settings_are_refused():
    with pytest.raises(ValueError, match="objective='kl'"):
        TrainConfig(objective="kl")
    with pytest.raises(ValueError, match="kd_temperature"):
        TrainConfig(kd_temperature=0)
    with pytest.raises(ValueError, match="kd_weight"):
        TrainConfig(kd_weight=1.5)
    with pytest.raises(ValueError, match="teacher_dtype='int8'"):
        TrainConfig(teacher_dtype="int8")


def test_new_fields_leave_old_hashes_alone():
    # Hashes of these configs before distillation and per-path bits existed (commit 82c3e19):
    # resumes and sweep rows of older runs must still match.
    assert TrainConfig().hash() == "8e66cf49c7511190"
    assert TrainConfig(preset="d4", bits=3, tokens="1M").hash() == "b308ce81c5807bee"
    base = TrainConfig()
    for kw in (dict(objective="kd"), dict(kd_temperature=2.0), dict(teacher_dtype="bfloat16")):
        assert replace(base, **kw).hash() != base.hash(), kw


# ---- the trainer ----------------------------------------------------------------------------

KD = dict(bits=2, embed_bits=2, group_size=32, qat_fraction=0.5, objective="kd")


def kd_config(data, out, **kw):
    """40 steps (20 FP, 20 QAT) at 2 bits everywhere: a quantization error large enough
    that distillation has something to recover."""
    return tiny_config(data, out, **{**KD, "optimizer_state_at_switch": "reset", **kw})


def test_from_scratch_kd_teacher_is_the_switch_and_the_loss_is_its_kl(tiny_data_dir, tmp_path):  # noqa: F811
    cfg = kd_config(tiny_data_dir, tmp_path / "run", kd_temperature=2.0, eval_every=10)
    t = Trainer(cfg)
    t.setup()
    t.run()
    switch = load_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000020")
    assert switch.state["phase"] == "fp"
    teacher = dict(tree_flatten(t.teacher.parameters()))
    want = {k: v for k, v in switch.weights.items() if ".quantizer." not in k}
    assert teacher.keys() == want.keys()
    for k, v in want.items():
        assert mx.array_equal(teacher[k], v), k
    final = float_weights(t.model)
    assert any(not mx.array_equal(final[k], v) for k, v in want.items())  # the student moved

    # The first QAT step's loss is T² · KL of the fake-quant switch model to the float one on
    # that step's batch, computed here with numpy.
    student = build_model(switch)
    set_fake_quant(student, True)
    float_model = build_model(switch)
    batch = TokenBatches(load_bundle(tiny_data_dir).train, cfg.batch_size, cfg.seq_len, cfg.seed)
    x = batch.batch(20)[:, :-1]
    kl = np_kl(np.array(student(x)), np.array(float_model(x)), 2.0).mean()
    losses = [r["loss"] for r in read_metrics(tmp_path / "run", "train")]
    assert losses[20] == pytest.approx(4.0 * kl, rel=1e-4)
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[20:23])  # distillation lowers it

    # Evaluations report the KL to the teacher (T = 1) in the QAT phase, and only there.
    evals = read_metrics(tmp_path / "run", "eval")
    assert [("kl" in e["qat"]) for e in evals] == [False, False, True, True]
    fin = read_metrics(tmp_path / "run", "final_eval")[0]
    val = list(eval_batches(load_bundle(tiny_data_dir).val, cfg.batch_size, cfg.seq_len, 3))
    trained = build_model(tmp_path / "run")
    hand = [np_kl(np.array(trained(b[:, :-1])), np.array(float_model(b[:, :-1])), 1.0) for b in val]
    assert fin["qat"]["kl"] == pytest.approx(float(np.concatenate(hand).mean()), rel=1e-4)
    assert fin["ptq"]["kl"] == fin["qat"]["kl"]  # min/max: the same grid
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["eval"]["qat"]["kl"] == fin["qat"]["kl"]


def test_kd_lowers_the_kl_to_the_teacher_more_than_ce(tiny_data_dir, tmp_path):  # noqa: F811
    kl = {}
    for w in (0.0, 1.0):  # mix at w = 0 is cross-entropy, evaluated against the same teacher
        cfg = kd_config(tiny_data_dir, tmp_path / f"w{w}", objective="mix", kd_weight=w)
        kl[w] = train(cfg)["eval"]["qat"]["kl"]
    assert kl[1.0] < 0.5 * kl[0.0], kl


def test_resume_with_kd_is_exact(tiny_data_dir, tmp_path):  # noqa: F811
    """Stopped in the QAT phase (step 27, two steps after the step-25 checkpoint) and
    resumed: the teacher is read from the switch checkpoint, and the run repeats the
    uninterrupted one bit for bit."""
    kw = dict(save_every=5, eval_every=5, objective="mix", kd_weight=0.7, kd_temperature=1.5)
    ref = train(kd_config(tiny_data_dir, tmp_path / "ref", **kw))
    cut = kd_config(tiny_data_dir, tmp_path / "cut", **kw)
    train_until(cut, 27)
    resumed = train(replace(cut, resume=True))
    for kind in ("train", "eval", "final_eval"):
        got, want = (
            timeless_records(tmp_path / "cut", kind),
            timeless_records(tmp_path / "ref", kind),
        )
        assert got == want, kind
    assert resumed["eval"] == ref["eval"] and "kl" in ref["eval"]["qat"]
    a, b = load_checkpoint(tmp_path / "cut"), load_checkpoint(tmp_path / "ref")
    for k, v in b.weights.items():
        assert mx.array_equal(a.weights[k], v), k


def test_resume_with_fixed_codes_is_exact(tiny_data_dir, tmp_path):  # noqa: F811
    """The anchor grid is saved with the model: a run stopped in the QAT phase resumes bit
    for bit."""
    kw = dict(save_every=5, quantizer="learned_affine", scale_grad="fixed_codes")
    ref = kd_config(tiny_data_dir, tmp_path / "ref", **kw)
    train(ref)
    cut = kd_config(tiny_data_dir, tmp_path / "cut", **kw)
    train_until(cut, 27)
    train(replace(cut, resume=True))
    for kind in ("train", "final_eval"):
        assert timeless_records(cut.out, kind) == timeless_records(ref.out, kind), kind
    a, b = load_checkpoint(tmp_path / "cut"), load_checkpoint(tmp_path / "ref")
    assert any(k.endswith("quantizer.anchor_scale") for k in b.weights)
    for k, v in b.weights.items():
        assert mx.array_equal(a.weights[k], v), k


def test_fine_tune_teacher_is_the_model_dir_in_teacher_dtype(tiny_data_dir, tmp_path):  # noqa: F811
    from mlx_qat.models import model_from_config, preset_config

    src = tmp_path / "float_model"
    src.mkdir()
    mcfg = preset_config("d2", 512)
    mx.random.seed(7)
    model = model_from_config(mcfg)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(src / "model.safetensors"), weights)
    (src / "config.json").write_text(json.dumps(mcfg))
    cfg = tiny_config(
        tiny_data_dir, tmp_path / "run", model=str(src), qat_fraction=1.0, tokens=4 * 128,
        objective="kd", teacher_dtype="bfloat16", kd_temperature=1.0,  # a fine-tune's is 2
    )  # fmt: skip
    t = Trainer(cfg)
    t.setup()
    t.run()
    teacher = dict(tree_flatten(t.teacher.parameters()))
    assert teacher.keys() == weights.keys()
    for k, v in weights.items():
        assert teacher[k].dtype == mx.bfloat16 and mx.array_equal(teacher[k], v.astype(mx.bfloat16))
    # the first step: the fake-quant model of the given weights against the bfloat16 teacher
    set_fake_quant(t.model, True)
    t.model.load_weights(list(weights.items()), strict=False)
    batch = TokenBatches(load_bundle(tiny_data_dir).train, cfg.batch_size, cfg.seq_len, cfg.seed)
    x = batch.batch(0)[:, :-1]
    model.set_dtype(mx.bfloat16)
    kl = np_kl(np.array(t.model(x)), np.array(model(x).astype(mx.float32)), 1.0).mean()
    first = read_metrics(tmp_path / "run", "train")[0]["loss"]
    assert first == pytest.approx(kl, rel=1e-3)


def test_kd_needs_a_teacher_and_the_memory_check_counts_it(tiny_data_dir, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="no FP phase; give --model DIR"):
        Trainer(
            tiny_config(tiny_data_dir, tmp_path / "a", objective="kd", qat_fraction=1.0)
        ).setup()
    assert not (tmp_path / "a").exists()
    from mlx_qat.train.distill import teacher_bytes

    t = Trainer(tiny_config(tiny_data_dir, tmp_path / "b", objective="kd"))
    t.setup()
    n = sum(v.size for v in float_weights(t.model).values())
    assert teacher_bytes(t.cfg, t.model, t.plan) == 4 * n  # float32, the model's dtype
    half = replace(t.cfg, teacher_dtype="float16")
    assert teacher_bytes(half, t.model, t.plan) == 2 * n
    assert teacher_bytes(replace(t.cfg, objective="ce"), t.model, t.plan) == 0
    c, b, s = t.model_config, 4, 32
    base = step_bytes(c, 1000, b, s)
    with_teacher = step_bytes(c, 1000, b, s, teacher_bytes=2 * n)
    assert with_teacher["teacher"] == 2 * n + b * s * c["vocab_size"] * 4
    assert with_teacher["total"] == base["total"] + with_teacher["teacher"]
    t.metrics.close()


def test_eval_teacher_flag_reports_kl(tiny_data_dir, tmp_path):  # noqa: F811
    from mlx_qat.eval import evaluate_checkpoint

    run = tmp_path / "run"
    train(tiny_config(tiny_data_dir, run, tokens=8 * 128, qat_fraction=0.5))
    switch = run / "checkpoints" / "step_00000004"
    ev = evaluate_checkpoint(run, teacher=switch, eval_batches=2)
    plain = evaluate_checkpoint(run, eval_batches=2)
    assert "kl" not in plain["qat"] and ev["qat"]["loss"] == plain["qat"]["loss"]
    trained, teacher = build_model(run), build_model(switch)
    set_fake_quant(teacher, False)
    data = load_bundle(tiny_data_dir)
    val = list(eval_batches(data.val, 4, 32, 2))
    hand = [np_kl(np.array(trained(b[:, :-1])), np.array(teacher(b[:, :-1])), 1.0) for b in val]
    assert ev["qat"]["kl"] == pytest.approx(float(np.concatenate(hand).mean()), rel=1e-4)
    set_fake_quant(trained, False)
    hand = [np_kl(np.array(trained(b[:, :-1])), np.array(teacher(b[:, :-1])), 1.0) for b in val]
    assert ev["fp"]["kl"] == pytest.approx(float(np.concatenate(hand).mean()), rel=1e-4)


def test_resume_refuses_a_changed_model_dir(tiny_data_dir, tmp_path):  # noqa: F811
    """A fine-tune reads its teacher from --model again on resume: if the folder now holds
    other weights, the resume is refused by name instead of distilling from another model."""
    from mlx_qat.checkpoint import CheckpointError
    from mlx_qat.models import model_from_config, preset_config

    src = tmp_path / "float_model"
    src.mkdir()
    mcfg = preset_config("d2", 512)
    (src / "config.json").write_text(json.dumps(mcfg))
    mx.random.seed(7)
    weights = dict(tree_flatten(model_from_config(mcfg).parameters()))
    mx.save_safetensors(str(src / "model.safetensors"), weights)
    cfg = tiny_config(
        tiny_data_dir, tmp_path / "run", model=str(src), qat_fraction=1.0, tokens=12 * 128,
        objective="kd", save_every=4,
    )  # fmt: skip
    train_until(cfg, 6)
    original = (src / "model.safetensors").read_bytes()
    changed = {**weights, "model.norm.weight": weights["model.norm.weight"] * 1.01}
    mx.save_safetensors(str(src / "model.safetensors"), changed)
    with pytest.raises(CheckpointError, match="another --model .* Resume with the original"):
        train(replace(cfg, resume=True))
    (src / "model.safetensors").write_bytes(original)  # the same bytes again: it resumes
    assert train(replace(cfg, resume=True))["steps"] == 12


def _dwq_and_qat_models(scale_grad: str):
    """A tiny tied-embedding teacher, mlx-lm's 3-bit g32 quantization of it with only scales
    and biases trainable (DWQ's student), and our QAT model of it with the weights frozen."""
    import copy

    from mlx_lm.utils import quantize_model
    from tiny_models import tiny_model

    from mlx_qat import QATConfig, QuantSpec, prepare
    from mlx_qat.prepare import qat_layers

    teacher = tiny_model("llama", seed=3, tie=True, vocab=256)
    dwq, ours = copy.deepcopy(teacher), copy.deepcopy(teacher)
    quantize_model(dwq, {"model_type": "llama"}, group_size=32, bits=3)
    dwq.freeze()
    for _, m in dwq.named_modules():
        if hasattr(m, "bits"):
            m.unfreeze(keys=["scales", "biases"], recurse=False)
    spec = QuantSpec("affine", 3, 32)
    prepare(ours, QATConfig(spec, spec, quantizer="learned_affine", scale_grad=scale_grad))
    ours.freeze()
    for _, layer in qat_layers(ours):
        layer.quantizer.unfreeze(keys=["scale", "bias"], recurse=False)
    return teacher, dwq, ours


def _dwq_step(model, opt, loss):
    import mlx.nn as nn

    _, g = nn.value_and_grad(model, loss)(model)
    opt.update(model, g)
    mx.eval(model.parameters(), opt.state)


def test_frozen_weights_with_fixed_codes_follow_dwq():
    """With the weights frozen, QAT with fixed codes (`kd`) takes the same Adam steps as
    mlx-lm's DWQ (its loss: KL of the logits at temperature T, no T² factor) on the same
    batches, tied embedding included, and never changes a code; the straight-through grid
    gradient does change codes (this test can fail)."""
    import mlx.optimizers as optim
    from mlx_lm.tuner.losses import kl_div_loss

    from mlx_qat.prepare import qat_layers

    T = 2.0
    for scale_grad in ("fixed_codes", "ste"):
        teacher, dwq, ours = _dwq_and_qat_models(scale_grad)
        codes0 = {p: layer.to_quantized().weight for p, layer in qat_layers(ours)}
        start = dict(tree_flatten(dwq.trainable_parameters()))
        # eps above float noise: a gradient that is zero up to summation order gets no step
        opt_dwq, opt_ours = optim.Adam(1e-3, eps=1e-6), optim.Adam(1e-3, eps=1e-6)
        for i in range(5):
            x = mx.random.randint(0, 256, (2, 16), key=mx.random.key(i))
            target = teacher(x)
            _dwq_step(dwq, opt_dwq, lambda m, x=x, t=target: kl_div_loss(m(x) / T, t / T).mean())
            _dwq_step(
                ours, opt_ours, lambda m, x=x, t=target: objective_loss(m(x), t, x, "kd", T) / T**2
            )
        theirs = dict(tree_flatten(dwq.trainable_parameters()))
        assert len(theirs) == 2 * 15  # 14 linear layers and the embedding
        same = all(
            mx.array_equal(layer.to_quantized().weight, codes0[p]) for p, layer in qat_layers(ours)
        )
        if scale_grad == "ste":
            assert not same
            continue
        assert same
        have = dict(tree_flatten(ours.parameters()))
        for k, v in theirs.items():
            path, name = k.rsplit(".", 1)
            mine = have[f"{path}.quantizer.{'scale' if name == 'scales' else 'bias'}"]
            # float32 summation order differs (and MLX's quantized matmul from BLAS): equal to
            # 2% of one Adam step (lr 1e-3), while five steps moved the grid by up to 5 steps
            np.testing.assert_allclose(mine, v, rtol=1e-4, atol=2e-5)
        moved = max(float(mx.abs(v - start[k]).max()) for k, v in theirs.items())
        assert moved > 2e-3, moved
