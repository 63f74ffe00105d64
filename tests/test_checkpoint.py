"""Checkpoints: exact round trip, atomic directories, corrupt files refused by name, keep-K."""

from __future__ import annotations

import json
import os

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

from mlx_qat.checkpoint import (
    CheckpointError,
    build_model,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    seal_checkpoint,
)
from mlx_qat.models import model_from_config, preset_config
from mlx_qat.prepare import prepare, set_fake_quant
from mlx_qat.qat_config import QATConfig
from mlx_qat.train.config import TrainConfig
from mlx_qat.train.optim import build_optimizer, load_optimizer_arrays, optimizer_arrays


def make(quantizer="lsq", fake=True):
    mx.random.seed(0)
    cfg = preset_config("d2", 256)
    model = model_from_config(cfg)
    qcfg = QATConfig.with_bits(4, quantizer=quantizer)
    prepare(model, qcfg, enabled=fake)
    opt = build_optimizer(model, TrainConfig())
    # One update so the optimizer state is non-trivial.
    grads = {k: mx.ones_like(v) for k, v in tree_flatten(model.trainable_parameters())}
    from mlx.utils import tree_unflatten

    opt.update(model, tree_unflatten(list(grads.items())))
    mx.eval(model.parameters(), opt.state)
    qat = {"qat_config": qcfg.to_dict(), "fake_quant": fake, "phase": "qat" if fake else "fp"}
    return model, opt, cfg, qat


def save(run, step, model, opt, cfg, qat, **kw):
    state = {"step": step, "tokens_seen": step * 10, "phase": qat["phase"], "data": {"step": step}}
    return save_checkpoint(run, step, model, opt, state, cfg, qat, **kw)


def test_round_trip_is_exact_and_rebuilds_the_model(tmp_path):
    model, opt, cfg, qat = make()
    path = save(tmp_path, 7, model, opt, cfg, qat)
    assert path.name == "step_00000007" and latest_checkpoint(tmp_path) == path
    for name in ("model.safetensors", "optimizer.safetensors", "config.json", "qat.json"):
        assert (path / name).is_file()
    ck = load_checkpoint(tmp_path)  # a run dir resolves to its latest checkpoint
    assert ck.step == 7 and ck.qat["fake_quant"] is True and ck.model_config == cfg
    want = dict(tree_flatten(model.parameters()))
    assert set(ck.weights) == set(want)
    assert any(k.endswith("quantizer.alpha") for k in ck.weights)
    for k, v in want.items():
        assert mx.array_equal(ck.weights[k], v), k
    rebuilt = build_model(path)
    x = mx.array([[1, 2, 3, 4]])
    assert mx.array_equal(rebuilt(x), model(x))
    # The optimizer state reloads into a fresh optimizer, step count included.
    fresh = build_optimizer(rebuilt, TrainConfig())
    load_optimizer_arrays(fresh, ck.optimizer_state)
    for k, v in optimizer_arrays(opt).items():
        assert mx.array_equal(optimizer_arrays(fresh)[k], v), k


def test_fake_quant_flag_follows_qat_json(tmp_path):
    model, opt, cfg, qat = make(quantizer="minmax", fake=False)
    path = save(tmp_path, 1, model, opt, cfg, qat)
    rebuilt = build_model(path)
    x = mx.array([[5, 6, 7]])
    assert mx.array_equal(rebuilt(x), model(x))
    set_fake_quant(model, True)
    assert not mx.array_equal(rebuilt(x), model(x))


def test_partial_directory_is_never_picked_up(tmp_path):
    model, opt, cfg, qat = make()
    good = save(tmp_path, 3, model, opt, cfg, qat)
    # A save killed mid-write leaves step_XXXXXXXX.tmp-<pid>, possibly with a higher step.
    partial = tmp_path / "checkpoints" / f"step_00000009.tmp-{os.getpid() + 1}"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\x00" * 10)
    assert latest_checkpoint(tmp_path) == good
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3]
    with pytest.raises(CheckpointError, match=r"\.tmp-"):
        load_checkpoint(partial)


def test_truncated_weights_are_refused_by_name(tmp_path):
    model, opt, cfg, qat = make()
    path = save(tmp_path, 4, model, opt, cfg, qat)
    f = path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors.*truncated"):
        load_checkpoint(path)
    # Same size but garbage: the safetensors parser refuses it, still naming the file.
    json_state = json.loads((path / "state.json").read_text())
    json_state["files"].pop("model.safetensors")
    (path / "state.json").write_text(json.dumps(json_state))
    f.write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)


def test_corrupt_or_missing_json_is_refused_by_name(tmp_path):
    model, opt, cfg, qat = make()
    path = save(tmp_path, 5, model, opt, cfg, qat)
    (path / "qat.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="qat.json is corrupt"):
        load_checkpoint(path)
    (path / "qat.json").unlink()
    with pytest.raises(CheckpointError, match="missing qat.json"):
        load_checkpoint(path)


def test_mismatched_weights_are_refused(tmp_path):
    model, opt, cfg, qat = make()
    path = save(tmp_path, 2, model, opt, cfg, qat)
    other = dict(cfg, hidden_size=128, num_attention_heads=2, num_key_value_heads=2)
    (path / "config.json").write_text(json.dumps(other))
    with pytest.raises(CheckpointError, match="config.json is corrupt or was edited"):
        build_model(path)
    seal_checkpoint(path)  # a deliberate edit, re-recorded: now the model check sees it
    with pytest.raises(CheckpointError, match="does not match"):
        build_model(path)


def test_keep_last_k_and_protected_switch(tmp_path):
    model, opt, cfg, qat = make()
    for step in (10, 20, 30, 40, 50):
        save(tmp_path, step, model, opt, cfg, qat, keep=2, protect=(20,))
    assert [s for s, _ in list_checkpoints(tmp_path)] == [20, 40, 50]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if ".tmp-" in p.name]


def test_resaving_a_step_replaces_it_whole(tmp_path):
    model, opt, cfg, qat = make()
    save(tmp_path, 6, model, opt, cfg, qat)
    path = save(tmp_path, 6, model, opt, cfg, dict(qat, phase="fp"))
    assert load_checkpoint(path).qat["phase"] == "fp"
    assert [s for s, _ in list_checkpoints(tmp_path)] == [6]
