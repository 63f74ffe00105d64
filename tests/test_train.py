"""The trainer on a tiny model: phases, switch, metrics, NaN guard, grad accumulation, twin."""

from __future__ import annotations

import json
import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from test_train_fixtures import CORPUS, tiny_config, tiny_data_dir, without_test_split  # noqa: F401

from mlx_qat.checkpoint import build_model, list_checkpoints, load_checkpoint
from mlx_qat.data import eval_batches, load_bundle
from mlx_qat.eval import evaluate_checkpoint
from mlx_qat.prepare import qat_layers, set_fake_quant
from mlx_qat.train import Trainer, TrainingDiverged, load_config, train
from mlx_qat.train.metrics import read_metrics
from mlx_qat.train.optim import is_decayed
from mlx_qat.train.twin import format_comparison


def hand_losses(checkpoint, batches) -> dict[str, float]:
    """FP and round-to-nearest PTQ loss of a saved checkpoint, computed here: the float
    weights, and every QAT layer's weight replaced by MLX's CPU mx.dequantize(mx.quantize(w))
    at its format, with fake quant off; mean cross-entropy over every target token."""
    out = {}
    for mode in ("fp", "ptq"):
        model = build_model(checkpoint)
        if mode == "ptq":
            for _, layer in qat_layers(model):
                spec = layer.spec
                with mx.stream(mx.cpu):
                    q = mx.quantize(layer["weight"], spec.group_size, spec.bits)
                    layer.weight = mx.dequantize(*q, spec.group_size, spec.bits)
        set_fake_quant(model, False)
        total = count = 0
        for x in batches:
            logits = model(x[:, :-1]).astype(mx.float32)
            total += nn.losses.cross_entropy(logits, x[:, 1:], reduction="sum").item()
            count += x[:, 1:].size
        out[mode] = total / count
    return out


def split_batches(data_dir, cfg, split: str) -> list[mx.array]:
    """The final evaluation's batches of `split`, cut here from the shards."""
    tokens = getattr(load_bundle(data_dir), split)
    return list(eval_batches(tokens, cfg.batch_size, cfg.seq_len, cfg.final_eval_batches or None))


def test_run_phases_switch_metrics_and_files(tiny_data_dir, tmp_path):  # noqa: F811
    cfg = tiny_config(
        tiny_data_dir, tmp_path / "run", eval_every=10, save_every=10, final_eval_batches=0
    )
    result = train(cfg)
    plan = result["plan"]
    assert (plan["total_steps"], plan["fp_steps"], plan["qat_steps"]) == (40, 30, 10)
    run = tmp_path / "run"
    assert load_config(run / "config.yaml") == cfg
    assert (run / "tokenizer" / "tokenizer.model").is_file()
    assert (run / "tokenizer" / "tokenizer.json").is_file()
    train_recs = read_metrics(run, "train")
    assert [r["step"] for r in train_recs] == list(range(1, 41))
    assert {r["phase"] for r in train_recs[:30]} == {"fp"}
    assert {r["phase"] for r in train_recs[30:]} == {"qat"}
    # Metrics LR is the plan's LR of that step (record `step` = steps completed).
    from mlx_qat.train.config import TrainConfig  # noqa: F401
    from mlx_qat.train.phase_plan import plan_for_config

    p = plan_for_config(cfg)
    assert all(r["lr"] == pytest.approx(p.lr_at(r["step"] - 1)) for r in train_recs)
    assert all(math.isfinite(r["loss"]) and r["tokens_per_s"] > 0 for r in train_recs)
    assert all(r["peak_memory_mb"] > 0 for r in train_recs)
    assert [r["step"] for r in read_metrics(run, "switch")] == [30]
    evals = read_metrics(run, "eval")
    assert [r["step"] for r in evals] == [10, 20, 30, 40]
    assert all(r["fp"]["tokens"] == evals[0]["fp"]["tokens"] for r in evals)
    # Checkpoints: the last K=2 that are not the switch, plus the switch (step 30, phase fp).
    steps = [s for s, _ in list_checkpoints(run)]
    assert steps == [20, 30, 40]
    switch = load_checkpoint(run / "checkpoints" / "step_00000030")
    assert switch.qat == {**switch.qat, "fake_quant": False, "phase": "fp"}
    final = load_checkpoint(run)
    assert final.qat["fake_quant"] is True and final.state["phase"] == "qat"
    # The result's eval is the final one, on the whole validation split (not the 16 batches).
    (fin,) = read_metrics(run, "final_eval")
    assert fin["step"] == 40 and final.state["eval"]["qat"]["loss"] == fin["qat"]["loss"]
    bundle = load_bundle(tiny_data_dir)
    assert fin["fp"]["tokens"] == (len(bundle.val) - 1) // cfg.seq_len * cfg.seq_len
    assert fin["fp"]["tokens"] > evals[-1]["fp"]["tokens"]
    assert result["eval"] == final.state["eval"]
    # ... and the same final evaluation on the whole held-out test split, beside it.
    (test,) = read_metrics(run, "test_eval")
    assert test["step"] == 40 and result["test"] == final.state["test"]
    assert result["test"] == {k: v for k, v in test.items() if k not in ("kind", "step", "phase")}
    assert test["fp"]["tokens"] == (len(bundle.test) - 1) // cfg.seq_len * cfg.seq_len
    assert result["test"]["fp"]["loss"] != result["eval"]["fp"]["loss"]
    assert json.loads((run / "result.json").read_text())["steps"] == 40


@pytest.mark.parametrize("quantizer", ["lsq", "learned_affine"])
def test_learnable_quantizers_are_initialised_at_the_switch(quantizer, tiny_data_dir, tmp_path):  # noqa: F811
    """Right after the FP→QAT switch (step 30), before any QAT step, each learnable quantizer
    holds its initial value computed from the weights at the switch: LSQ α = max|W_row| / Qp
    (Qp = 7 at 4 bits), learned affine (scale, bias) = MLX's min/max grid (CPU mx.quantize).
    The switch checkpoint holds those weights (it is saved before the switch) and the values
    `prepare` set from the initial weights, which the 30 FP steps made stale."""
    t = Trainer(tiny_config(tiny_data_dir, tmp_path / "run", quantizer=quantizer))
    t.setup()
    at_switch = {}
    switch = t.switch

    def switch_and_record():
        switch()
        at_switch.update(tree_flatten(t.model.parameters()))

    t.switch = switch_and_record
    t.run()
    assert t.plan.fp_steps == 30 and at_switch
    before = load_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000030").weights
    paths = [p for p, _ in qat_layers(t.model)]
    assert len(paths) == 2 * 7 + 1  # 7 per block, the (tied) embedding
    for path in paths:
        w = before[f"{path}.weight"]
        if quantizer == "lsq":
            want = {"alpha": np.abs(np.array(w)).max(axis=-1, keepdims=True) / 7}
        else:
            with mx.stream(mx.cpu):
                _, scales, biases = mx.quantize(w, 64, 4)
            want = {"scale": np.array(scales), "bias": np.array(biases)}
        for name, value in want.items():
            key = f"{path}.quantizer.{name}"
            # (rtol: a GPU's float32 division may differ from the CPU's in the last bit)
            np.testing.assert_allclose(np.array(at_switch[key]), value, rtol=1e-5, err_msg=key)
            # what prepare set at step 0 is not it: the weights moved in the FP phase
            assert not np.allclose(np.array(before[key]), value, rtol=1e-3), key


def test_weight_decay_mask(tiny_data_dir, tmp_path):  # noqa: F811
    t = Trainer(tiny_config(tiny_data_dir, tmp_path / "run", quantizer="lsq"))
    t.setup()
    flat = dict(tree_flatten(t.model.trainable_parameters()))
    decayed = {k for k, v in flat.items() if is_decayed(k, v)}
    assert "model.embed_tokens.weight" in decayed
    assert "model.layers.0.self_attn.q_proj.weight" in decayed
    assert "model.layers.0.input_layernorm.weight" not in decayed
    assert not any("quantizer" in k for k in decayed)
    assert any("quantizer.alpha" in k for k in flat)
    # Quantizer parameters get their own AdamW: no decay, LR x quantizer_lr_scale.
    from mlx_qat.train.optim import set_lr

    set_lr(t.optimizer, 0.01)
    q, nodecay, decay = t.optimizer.optimizers
    assert q.learning_rate.item() == pytest.approx(0.01 * t.cfg.quantizer_lr_scale)
    assert nodecay.learning_rate.item() == pytest.approx(0.01) == decay.learning_rate.item()
    assert q.weight_decay == nodecay.weight_decay == 0 and decay.weight_decay == t.cfg.weight_decay
    q_state = {k.rsplit(".", 1)[0] for k, _ in tree_flatten(q.state)}
    assert {k for k in flat if "quantizer" in k} <= q_state
    t.metrics.close()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_data_dir, tmp_path):  # noqa: F811
    def poison(trainer, step):
        if step == 5:
            w = trainer.model.model.layers[0].mlp.up_proj.weight
            trainer.model.model.layers[0].mlp.up_proj.weight = w * mx.array(float("nan"))

    cfg = tiny_config(tiny_data_dir, tmp_path / "run", save_every=4)
    with pytest.raises(TrainingDiverged, match="not finite.*step_00000004"):
        train(cfg, on_step=poison)
    run = tmp_path / "run"
    assert [s for s, _ in list_checkpoints(run)] == [4]
    ck = load_checkpoint(run)
    assert all(bool(mx.isfinite(v).all()) for v in ck.weights.values())
    assert read_metrics(run, "error")[0]["step"] == 5
    # The run can be resumed from the last good checkpoint.
    with pytest.raises(ValueError, match="--resume"):
        Trainer(cfg).setup()


def test_grad_accumulation_matches_the_large_batch(tiny_data_dir, tmp_path):  # noqa: F811
    # batch(s*A + i) with B/A sequences covers exactly the windows of batch(s) with B.
    kw = dict(tokens=8 * 4 * 32, qat_fraction=0.0)
    big = train(tiny_config(tiny_data_dir, tmp_path / "a", batch_size=4, **kw))
    acc = train(tiny_config(tiny_data_dir, tmp_path / "b", batch_size=2, grad_accum=2, **kw))
    assert big["plan"]["total_steps"] == acc["plan"]["total_steps"] == 8
    la = [r["loss"] for r in read_metrics(tmp_path / "a", "train")]
    lb = [r["loss"] for r in read_metrics(tmp_path / "b", "train")]
    assert lb == pytest.approx(la, rel=1e-4)


@pytest.mark.parametrize("f, switches", [(0.0, []), (1.0, [0])])
def test_ptq_only_and_qat_from_scratch(tiny_data_dir, tmp_path, f, switches):  # noqa: F811
    cfg = tiny_config(tiny_data_dir, tmp_path / "run", qat_fraction=f, tokens=8 * 128)
    result = train(cfg)
    run = tmp_path / "run"
    assert [r["step"] for r in read_metrics(run, "switch")] == switches
    phases = {r["phase"] for r in read_metrics(run, "train")}
    assert phases == ({"fp"} if f == 0 else {"qat"})
    assert load_checkpoint(run).qat["fake_quant"] is (f == 1.0)
    # The reported numbers are those of the saved model: evaluated again from the checkpoint,
    # and computed here (float weights; CPU mx.quantize round-to-nearest). With the min/max
    # quantizer, QAT is the PTQ of the trained weights.
    for key, split in (("eval", "val"), ("test", "test")):
        ev = result[key]
        again = evaluate_checkpoint(run, split=split)
        hand = hand_losses(run, split_batches(tiny_data_dir, cfg, split))
        assert again["split"] == split and again["tokens"] == ev["fp"]["tokens"]
        for mode in ("fp", "ptq", "qat"):
            assert ev[mode]["loss"] == pytest.approx(again[mode]["loss"], rel=1e-5), (key, mode)
        assert ev["fp"]["loss"] == pytest.approx(hand["fp"], rel=1e-4)
        assert ev["ptq"]["loss"] == pytest.approx(hand["ptq"], rel=1e-4)
        assert ev["qat"] == ev["ptq"] and hand["ptq"] > hand["fp"]


def test_optimizer_reset_at_switch(tiny_data_dir, tmp_path):  # noqa: F811
    cfg = tiny_config(tiny_data_dir, tmp_path / "run", optimizer_state_at_switch="reset")
    train(cfg)
    opt = load_checkpoint(tmp_path / "run").optimizer_state
    assert int(opt["states.2.step"].item()) == 10  # counted from the switch (10 QAT steps)


def test_fp_twin_comparison(tiny_data_dir, tmp_path):  # noqa: F811
    # 2-bit weights and embeddings: the twin's round-to-nearest PTQ is clearly worse than its
    # FP (~0.08 nats after 40 steps), so the gap is always defined and checked.
    cfg = tiny_config(tiny_data_dir, tmp_path / "run", fp_twin=True, bits=2, embed_bits=2)
    result = train(cfg)
    run, twin_dir = tmp_path / "run", tmp_path / "run" / "fp_twin"
    twin_train = read_metrics(twin_dir, "train")
    assert [r["step"] for r in twin_train] == list(range(31, 41))  # the QAT phase only
    main_train = read_metrics(run, "train")[30:]
    assert [r["lr"] for r in twin_train] == [r["lr"] for r in main_train]
    assert load_checkpoint(twin_dir).qat["fake_quant"] is False
    c = result["comparison"]
    assert c["baseline"] == "fp twin" and c["split"] == "test"
    # The table's numbers, from the saved checkpoints on the test split: FP and PTQ of the
    # twin, QAT of the run (min/max: the round-to-nearest of the run's own weights).
    twin = evaluate_checkpoint(twin_dir, split="test")
    qat = evaluate_checkpoint(run, split="test")
    batches = split_batches(tiny_data_dir, cfg, "test")
    hand_twin, hand_run = hand_losses(twin_dir, batches), hand_losses(run, batches)
    assert c["fp"]["tokens"] == twin["tokens"] == sum(x[:, 1:].size for x in batches)
    for got, again, hand in (
        (c["fp"], twin["fp"], hand_twin["fp"]),
        (c["ptq"], twin["ptq"], hand_twin["ptq"]),
        (c["qat"], qat["qat"], hand_run["ptq"]),
    ):
        assert got["loss"] == pytest.approx(again["loss"], rel=1e-5)
        assert got["loss"] == pytest.approx(hand, rel=1e-4)
        assert got["bpb"] == pytest.approx(again["bpb"], rel=1e-5)
    fp, ptq, q = hand_twin["fp"], hand_twin["ptq"], hand_run["ptq"]
    assert ptq > fp + 0.03  # 2 bits: a PTQ gap to recover
    assert c["gap_recovered"] == pytest.approx((ptq - q) / (ptq - fp), rel=1e-3)
    # Not the validation split's numbers (those stay in result["eval"], for tuning).
    assert c["fp"]["loss"] != result["twin"]["eval"]["fp"]["loss"]
    table = format_comparison(result)
    assert "test loss" in table and "split: test (held out" in table
    assert f"{c['qat']['loss']:.4f}" in table and f"{100 * c['gap_recovered']:.1f}%" in table


def test_data_without_a_test_split_trains_and_says_so(tiny_data_dir, tmp_path, caplog):  # noqa: F811
    import logging

    old = without_test_split(tiny_data_dir, tmp_path / "old_data")
    with caplog.at_level(logging.WARNING, logger="mlx_qat"):
        result = train(tiny_config(old, tmp_path / "run", tokens=8 * 128))
    assert "validation only" in caplog.text and "has no test split" in caplog.text
    assert result["test"] is None and result["eval"]["fp"]["loss"] > 0
    assert not read_metrics(tmp_path / "run", "test_eval")
    table = format_comparison(result)
    assert "val loss" in table and "this data has no test split" in table


def test_resume_checks_the_config_and_a_finished_run_is_a_no_op(tiny_data_dir, tmp_path):  # noqa: F811
    from dataclasses import replace

    from mlx_qat.checkpoint import CheckpointError

    cfg = tiny_config(tiny_data_dir, tmp_path / "run", tokens=8 * 128, save_every=4)
    first = train(cfg)
    config_yaml = (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(CheckpointError, match="config hash"):
        Trainer(replace(cfg, lr=1e-4, resume=True)).setup()
    assert (tmp_path / "run" / "config.yaml").read_text() == config_yaml
    lines = len(read_metrics(tmp_path / "run"))
    again = train(replace(cfg, resume=True, eval_every=3))  # book-keeping may change
    assert again["eval"] == first["eval"] and again["steps"] == first["steps"]
    assert again["test"] == first["test"] and first["test"]["qat"]  # from the checkpoint
    assert len(read_metrics(tmp_path / "run")) == lines


def test_plot_of_a_run_and_a_clear_error_without_matplotlib(tiny_data_dir, tmp_path, monkeypatch):  # noqa: F811
    from mlx_qat.train import plot

    train(tiny_config(tiny_data_dir, tmp_path / "run", eval_every=10, fp_twin=True))
    with monkeypatch.context() as m:
        m.setitem(__import__("sys").modules, "matplotlib", None)
        with pytest.raises(ImportError, match=r"pip install 'mlx_qat\[plot\]'"):
            plot.plot_run(tmp_path / "run")
    pytest.importorskip("matplotlib")
    out = plot.plot_run(tmp_path / "run")
    assert out == tmp_path / "run" / "loss.png" and out.stat().st_size > 10_000


def test_fp_twin_resumes(tiny_data_dir, tmp_path):  # noqa: F811
    from dataclasses import replace

    cfg = tiny_config(tiny_data_dir, tmp_path / "run", fp_twin=True, tokens=12 * 128)
    first = train(cfg)
    again = train(replace(cfg, resume=True))  # the twin resumes (finished: a no-op) too
    assert again["comparison"] == first["comparison"]


def test_the_twin_trains_with_cross_entropy_whatever_the_objective(tiny_data_dir, tmp_path):  # noqa: F811
    """The twin is the float model the budget buys: a kd run's twin is a ce run's twin, bit for
    bit (the FP phases are the same, so are the switch checkpoints the twins branch from)."""
    twins = {}
    for objective in ("ce", "kd"):
        cfg = tiny_config(tiny_data_dir, tmp_path / objective, fp_twin=True, objective=objective)
        twins[objective] = train(cfg)["twin"]["test"]["fp"]["loss"]
    assert twins["kd"] == twins["ce"]


def test_qat_fine_tune_of_an_existing_mlx_lm_model(hf_model, tiny_data_dir, tmp_path):  # noqa: F811
    """A float mlx-lm model dir with its own Hugging Face tokenizer (512 ids) trains on data
    of that tokenizer only: data of another tokenizer with the same vocabulary size (the
    512-piece sentencepiece `tiny_data_dir`) is refused, naming both; raw text is tokenized
    with the model's tokenizer."""
    import re
    import shutil

    from mlx_qat.data import prepare_data, tokenizer_sha256

    src = tmp_path / "float_model"  # config.json + model.safetensors + tokenizer files
    shutil.copytree(hf_model, src)
    cfg = json.loads((src / "config.json").read_text())
    assert cfg["vocab_size"] == load_bundle(tiny_data_dir).vocab_size == 512
    with pytest.raises(
        ValueError,
        match=rf"--data .* encoded with the sentencepiece tokenizer .*, but --model "
        rf"{re.escape(str(src))} has its own hf tokenizer \(sha256 [0-9a-f]{{16}}, vocab 512\).*"
        rf"\(mlx_qat.data --tokenizer {re.escape(str(src))} --input TEXT --out DIR",
    ):
        train(tiny_config(tiny_data_dir, tmp_path / "run0", model=str(src)))
    assert not (tmp_path / "run0" / "checkpoints").exists()
    own = tokenizer_sha256(src)

    data = prepare_data(CORPUS, tmp_path / "data", tokenizer=src, val_fraction=0.1)
    run = tmp_path / "run"
    result = train(tiny_config(data.path, run, model=str(src), qat_fraction=1.0, tokens=4 * 128))
    assert result["plan"]["qat_steps"] == 4
    ck = load_checkpoint(run, optimizer=False)
    assert ck.model_config["hidden_size"] == 64 and ck.qat["fake_quant"] is True
    assert ck.state["tokenizer_sha256"] == own  # what eval and convert check
    for f in (run / "tokenizer").iterdir():  # the run keeps the model's own tokenizer files
        assert f.read_bytes() == (src / f.name).read_bytes(), f.name
    # Raw text (no prepared data): the run tokenizes it with the model's tokenizer.
    t = Trainer(tiny_config(CORPUS, tmp_path / "run1", model=str(src), vocab_size=1000))
    t.setup()
    assert t.bundle.manifest["tokenizer"]["sha256"] == own and t.bundle.vocab_size == 512
    # The run starts from the given weights, not from a fresh init.
    got = dict(tree_flatten(t.model.parameters()))
    for k, v in mx.load(str(src / "model.safetensors")).items():
        assert mx.array_equal(got[k], v), k
    t.metrics.close()
    (src / "config.json").write_text(
        json.dumps({**cfg, "quantization": {"bits": 4, "group_size": 64}})
    )
    with pytest.raises(ValueError, match="already quantized"):
        Trainer(tiny_config(data.path, tmp_path / "run2", model=str(src))).setup()
