"""The trainer on a tiny model: phases, switch, metrics, NaN guard, grad accumulation, twin."""

from __future__ import annotations

import json
import math

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten
from test_train_fixtures import tiny_config, tiny_data_dir  # noqa: F401

from mlx_qat.checkpoint import list_checkpoints, load_checkpoint
from mlx_qat.data import load_bundle
from mlx_qat.prepare import qat_layers
from mlx_qat.train import Trainer, TrainingDiverged, load_config, train
from mlx_qat.train.metrics import read_metrics
from mlx_qat.train.optim import is_decayed


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
    from mlx_qat.train.plan import plan_for_config

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
    val = load_bundle(tiny_data_dir).val
    assert fin["fp"]["tokens"] == (len(val) - 1) // cfg.seq_len * cfg.seq_len
    assert fin["fp"]["tokens"] > evals[-1]["fp"]["tokens"]
    assert result["eval"] == final.state["eval"]
    assert json.loads((run / "result.json").read_text())["steps"] == 40


def test_lsq_quantizers_are_initialised_at_the_switch(tiny_data_dir, tmp_path):  # noqa: F811
    seen = {}

    def hook(trainer, step):
        if step in (29, 31):
            seen[step] = {
                p: mx.array(layer.quantizer.alpha) for p, layer in qat_layers(trainer.model)
            }

    train(tiny_config(tiny_data_dir, tmp_path / "run", quantizer="lsq"), on_step=hook)
    # In the FP phase alpha gets no gradient; at the switch it is re-initialised from the
    # moved weights, and then it trains.
    before, after = seen[29], seen[31]
    assert any(not mx.allclose(before[p], after[p]) for p in before)


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
    result = train(tiny_config(tiny_data_dir, tmp_path / "run", qat_fraction=f, tokens=8 * 128))
    run = tmp_path / "run"
    assert [r["step"] for r in read_metrics(run, "switch")] == switches
    phases = {r["phase"] for r in read_metrics(run, "train")}
    assert phases == ({"fp"} if f == 0 else {"qat"})
    ev = result["eval"]
    assert ev["fp"] and ev["ptq"] and ev["qat"]
    assert load_checkpoint(run).qat["fake_quant"] is (f == 1.0)


def test_optimizer_reset_at_switch(tiny_data_dir, tmp_path):  # noqa: F811
    cfg = tiny_config(tiny_data_dir, tmp_path / "run", optimizer_state_at_switch="reset")
    train(cfg)
    opt = load_checkpoint(tmp_path / "run").optimizer_state
    assert int(opt["states.2.step"].item()) == 10  # counted from the switch (10 QAT steps)


def test_fp_twin_comparison(tiny_data_dir, tmp_path):  # noqa: F811
    cfg = tiny_config(tiny_data_dir, tmp_path / "run", fp_twin=True)
    result = train(cfg)
    twin_dir = tmp_path / "run" / "fp_twin"
    twin_train = read_metrics(twin_dir, "train")
    assert [r["step"] for r in twin_train] == list(range(31, 41))  # the QAT phase only
    main_train = read_metrics(tmp_path / "run", "train")[30:]
    assert [r["lr"] for r in twin_train] == [r["lr"] for r in main_train]
    assert load_checkpoint(twin_dir).qat["fake_quant"] is False
    c = result["comparison"]
    assert c["baseline"] == "fp twin"
    assert c["fp"] == result["twin"]["eval"]["fp"] and c["qat"] == result["eval"]["qat"]
    if c["ptq"]["loss"] > c["fp"]["loss"]:
        expect = (c["ptq"]["loss"] - c["qat"]["loss"]) / (c["ptq"]["loss"] - c["fp"]["loss"])
        assert c["gap_recovered"] == pytest.approx(expect)


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


def test_qat_fine_tune_of_an_existing_mlx_lm_model(tiny_data_dir, tmp_path):  # noqa: F811
    from mlx_qat.models import model_from_config, preset_config

    # A float mlx-lm model directory: config.json + model.safetensors.
    src = tmp_path / "float_model"
    src.mkdir()
    cfg = preset_config("d2", 512)
    mx.random.seed(7)
    model = model_from_config(cfg)
    mx.save_safetensors(str(src / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (src / "config.json").write_text(json.dumps(cfg))
    run = tmp_path / "run"
    result = train(
        tiny_config(tiny_data_dir, run, model=str(src), qat_fraction=1.0, tokens=4 * 128)
    )
    assert result["plan"]["qat_steps"] == 4
    ck = load_checkpoint(run, optimizer=False)
    assert ck.model_config["hidden_size"] == 64 and ck.qat["fake_quant"] is True
    # The run starts from the given weights, not from a fresh init.
    t = Trainer(tiny_config(tiny_data_dir, tmp_path / "run1", model=str(src)))
    t.setup()
    got = dict(tree_flatten(t.model.parameters()))
    for k, v in tree_flatten(model.parameters()):
        assert mx.array_equal(got[k], v), k
    t.metrics.close()
    (src / "config.json").write_text(
        json.dumps({**cfg, "quantization": {"bits": 4, "group_size": 64}})
    )
    with pytest.raises(ValueError, match="already quantized"):
        Trainer(tiny_config(tiny_data_dir, tmp_path / "run2", model=str(src))).setup()
