"""convert's inputs and outputs: mlx-lm model directories in and out, sharding, checkpoint
selection, the CLI's --config."""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import pytest
import test_convert_fixtures as fx
import yaml
from mlx.utils import tree_flatten
from mlx_lm import load
from mlx_lm.utils import quantize_model

from mlx_qat.checkpoint import seal_checkpoint
from mlx_qat.cli.convert import main
from mlx_qat.convert import ConvertError, convert

exported, same = fx.exported, fx.same


@pytest.fixture
def float_mlx_dir(tmp_path, runs):
    """A float mlx-lm model directory (a never-quantized run, exported with --dequantize)."""
    run = runs.make(tmp_path / "fp_run", fake_quant=False)
    convert(run.path, tmp_path / "float_model", dequantize=True)
    return tmp_path / "float_model"


def test_float_mlx_model_ptq_equals_mlx_lm_convert(float_mlx_dir, tmp_path, tiny_data):
    result = convert(
        float_mlx_dir, tmp_path / "q", q_bits=3, parity_data=tiny_data.path, parity_batches=1
    )
    assert result.method == "ptq" and result.parity["rel_diff"] <= 1e-4

    model, _, config = load(str(float_mlx_dir), return_config=True)
    model, config = quantize_model(model, config, 64, 3)  # what `mlx_lm.convert -q` does
    ours = exported(tmp_path / "q")
    theirs = dict(tree_flatten(model.parameters()))
    assert set(ours) == set(theirs)
    for k, v in theirs.items():
        assert same(ours[k], v), k
    saved = json.loads((tmp_path / "q" / "config.json").read_text())
    assert saved["quantization"] == config["quantization"]


def test_quantized_mlx_model_dequantizes_for_training(tmp_path, tiny_data, runs):
    run = runs.make(tmp_path / "run")
    convert(run.path, tmp_path / "q")
    with pytest.raises(ConvertError, match=r"already quantized.*--dequantize"):
        convert(tmp_path / "q", tmp_path / "f")
    result = convert(
        tmp_path / "q",
        tmp_path / "f",
        dequantize=True,
        parity_data=tiny_data.path,
        parity_batches=1,
    )
    assert result.method == "dequantize" and result.parity["rel_diff"] <= 1e-4
    q, f = exported(tmp_path / "q"), exported(tmp_path / "f")
    w = mx.dequantize(
        q["model.embed_tokens.weight"],
        q["model.embed_tokens.scales"],
        q["model.embed_tokens.biases"],
        64,
        4,
    )
    assert same(f["model.embed_tokens.weight"], w)
    assert "quantization" not in json.loads((tmp_path / "f" / "config.json").read_text())
    # The float directory is a start for QAT fine-tuning; PTQ of it again loads as well.
    again = convert(tmp_path / "f", tmp_path / "q2", parity_data=tiny_data.path, parity_batches=1)
    assert again.method == "ptq" and again.parity["passed"]


def test_sharded_weights_with_index(tmp_path, runs, monkeypatch):
    run = runs.make(tmp_path / "run")
    fx.small_shards(monkeypatch, 20_000)
    result = convert(run.path, tmp_path / "out")
    names = sorted(result.files)
    n = len(names)
    assert n > 1 and names == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert all(size <= 20_000 + 4_096 for size in result.files.values())  # tensor bytes + header
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    files = exported(tmp_path / "out")
    assert set(index["weight_map"]) == set(files) and set(index["weight_map"].values()) == set(
        names
    )
    assert index["metadata"]["total_size"] == sum(v.nbytes for v in files.values())
    assert result.parity["rel_diff"] <= 1e-4  # loaded through mlx_lm.load from the shards


def test_run_dir_uses_latest_complete_checkpoint(tmp_path, runs):
    run = runs.make(tmp_path / "run")
    later = run.checkpoint.with_name("step_00000005")
    shutil.copytree(run.checkpoint, later)
    (later / "state.json").write_text(json.dumps({"step": 5}))
    seal_checkpoint(later)  # a deliberate edit: record it, or the checksum refuses it
    (run.checkpoint.with_name("step_00000009.tmp-7")).mkdir()  # being written: ignored
    result = convert(run.path, tmp_path / "out", parity_check=False)
    assert result.step == 5
    direct = convert(run.checkpoint, tmp_path / "out2", parity_check=False)
    assert direct.step == 3 and direct.source == str(run.path)


def test_cli_config_file_and_summary(tmp_path, capsys, runs):
    run = runs.make(tmp_path / "run")
    cfg = tmp_path / "convert.yaml"
    cfg.write_text(yaml.safe_dump({"mlx-path": str(tmp_path / "yaml_out"), "parity_batches": 1}))
    assert main([str(run.path), "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "yaml_out" in out and "bits per weight" in out and "ok" in out
    saved = json.loads((tmp_path / "yaml_out" / "mlx_qat.json").read_text())
    assert saved["options"]["parity_batches"] == 1 and saved["parity"]["num_batches"] == 1
    cfg.write_text(yaml.safe_dump({"q_bitz": 4}))
    with pytest.raises(SystemExit) as err:
        main([str(run.path), "--config", str(cfg)])
    assert err.value.code == 2 and "q_bitz" in capsys.readouterr().err


def test_lone_checkpoint_needs_a_tokenizer(tmp_path, tiny_data, runs):
    run = runs.make(tmp_path / "run")
    lone = tmp_path / "lone_ckpt"
    shutil.copytree(run.checkpoint, lone)
    with pytest.raises(ConvertError, match=r"no tokenizer.*--tokenizer DIR"):
        convert(lone, tmp_path / "out", parity_check=False)
    assert not (tmp_path / "out").exists()
    result = convert(
        lone,
        tmp_path / "out",
        tokenizer=run.path / "tokenizer",
        parity_data=tiny_data.path,
        parity_batches=1,
    )
    assert result.parity["rel_diff"] <= 1e-4 and (tmp_path / "out" / "tokenizer.json").exists()
