"""mlx_qat.convert end to end: CLI in a subprocess, mlx_lm.load/generate in a fresh process,
bad inputs, atomic output, the parity check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_convert_fixtures import BATCH, EVAL_BATCHES, REPO, SEQ_LEN, run_cli, spec

from mlx_qat.checkpoint import seal_checkpoint
from mlx_qat.convert import ConvertError, ParityError, convert, val_loss
from mlx_qat.data import eval_batches
from mlx_qat.qat_config import QATConfig

# Runs in a fresh interpreter: nothing of the converting process (caches, patched modules).
FRESH = r"""
import json, sys
import mlx.core as mx, mlx.nn as nn
from mlx_lm import load, stream_generate
from mlx_qat.data import eval_batches, load_bundle

path, data, batch, seq, n = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
model, tok = load(path)
tokens = [r.token for r in stream_generate(model, tok, "The king", max_tokens=8)]
total = count = 0
for x in eval_batches(load_bundle(data).val, batch, seq, n):
    logits = model(x[:, :-1]).astype(mx.float32)
    total += nn.losses.cross_entropy(logits, x[:, 1:], reduction="sum").item()
    count += x[:, 1:].size
kinds = sorted({type(m).__name__ for _, m in model.named_modules()})
print(json.dumps({"tokens": tokens, "loss": total / count, "kinds": kinds}))
"""


def fresh_load(path: Path, data) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            FRESH,
            str(path),
            str(data.path),
            str(BATCH),
            str(SEQ_LEN),
            str(EVAL_BATCHES),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def reference_loss(model, data) -> float:
    return val_loss(model, eval_batches(data.val, BATCH, SEQ_LEN, EVAL_BATCHES))


def test_cli_export_loads_generates_and_matches_fake_quant_in_fresh_process(
    tmp_path, tiny_data, runs
):
    run = runs.make(tmp_path / "run")
    out = tmp_path / "mlx_model"
    proc = run_cli(run.path, "--mlx-path", out)
    assert "parity" in proc.stdout and "ok" in proc.stdout

    got = fresh_load(out, tiny_data)
    assert len(got["tokens"]) >= 1
    assert "QuantizedLinear" in got["kinds"] and "QuantizedEmbedding" in got["kinds"]
    ref = reference_loss(run.model, tiny_data)
    assert abs(got["loss"] - ref) / ref <= 1e-4

    config = json.loads((out / "config.json").read_text())
    assert config["quantization"] == {"group_size": 64, "bits": 4, "mode": "affine"}
    assert config["quantization_config"] == config["quantization"]
    card = (out / "README.md").read_text()
    assert "step 3" in card and "passed" in card and f"{ref:.4f}"[:5] in card
    from huggingface_hub import ModelCard  # the header: mlx-lm's Hub metadata

    meta = ModelCard.load(out / "README.md").data
    assert (meta.library_name, meta.pipeline_tag, meta.tags) == (
        "mlx",
        "text-generation",
        ["mlx", "mlx_qat"],
    )
    assert not list(tmp_path.glob("*.tmp-*"))


# ---- bad input ----------------------------------------------------------------------------


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ConvertError, match=r"no such file or directory; pass a training run"):
        convert(tmp_path / "nope", tmp_path / "out")


def test_run_without_checkpoints_and_incomplete_checkpoint(tmp_path):
    (tmp_path / "run" / "checkpoints" / "step_00000005.tmp-99").mkdir(parents=True)
    with pytest.raises(ConvertError, match=r"no complete checkpoint"):
        convert(tmp_path / "run", tmp_path / "out")
    half = tmp_path / "ckpt"
    half.mkdir()
    (half / "state.json").write_text("{}")
    with pytest.raises(ConvertError, match=r"missing model.safetensors; the checkpoint is incompl"):
        convert(half, tmp_path / "out")
    (half / "model.safetensors").write_bytes(b"")  # the checkpoint verifies weights first
    with pytest.raises(ConvertError, match=r"missing config.json; the checkpoint is incomplete"):
        convert(half, tmp_path / "out")


def test_corrupt_checkpoint_names_the_file(tmp_path, runs):
    run = runs.make(tmp_path / "run")
    weights = run.checkpoint / "model.safetensors"
    intact = weights.read_bytes()
    weights.write_bytes(intact[:200])
    with pytest.raises(ConvertError, match=r"model.safetensors"):
        convert(run.path, tmp_path / "out")
    weights.write_bytes(intact)  # one corrupt file at a time: the weights are verified first
    (run.checkpoint / "qat.json").write_text("{not json")
    with pytest.raises(ConvertError, match=r"qat.json.*corrupt"):
        convert(run.path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_fp_phase_checkpoint_needs_ptq(tmp_path, runs):
    run = runs.make(tmp_path / "run", fake_quant=False)
    with pytest.raises(ConvertError, match=r"fake quantization off.*--ptq"):
        convert(run.path, tmp_path / "out")
    result = convert(run.path, tmp_path / "out", ptq=True)
    assert result.method == "ptq" and result.parity["passed"]


def test_existing_output_needs_force(tmp_path, runs):
    run = runs.make(tmp_path / "run")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ConvertError, match=r"already exists; pass --force"):
        convert(run.path, out)
    assert (out / "keep.txt").exists()
    # --force replaces a model directory only (tests/test_convert_output.py), never keep.txt.
    with pytest.raises(ConvertError, match=r"--force replaces only a model directory.*keep.txt"):
        convert(run.path, out, force=True)
    assert (out / "keep.txt").read_text() == "x"
    (out / "keep.txt").unlink()
    convert(run.path, out, force=True)  # an empty directory
    convert(run.path, out, force=True)  # a previous export
    assert (out / "config.json").exists()
    for target in (run.path, run.checkpoint):  # --force must never delete the input
        with pytest.raises(ConvertError, match=r"overlaps the input"):
            convert(run.path, target, force=True)


def test_format_flags_must_match_a_qat_run(tmp_path, runs):
    run = runs.make(tmp_path / "run")
    with pytest.raises(ConvertError, match=r"trained with QAT for affine4g64.*--ptq"):
        convert(run.path, tmp_path / "out", q_bits=2)
    with pytest.raises(ConvertError, match=r"affine supports bits"):
        convert(run.path, tmp_path / "out", q_bits=7, ptq=True)
    with pytest.raises(ConvertError, match=r"either --ptq or --dequantize"):
        convert(run.path, tmp_path / "out", ptq=True, dequantize=True)
    convert(run.path, tmp_path / "out", q_bits=4, q_group_size=64, q_mode="affine")


def test_unsupported_formats_are_clear_errors(tmp_path, runs):
    from mlx_qat.convert.pack import quantize_model
    from mlx_qat.prepare import qat_layers
    from mlx_qat.quant import LSQQuantizer

    run = runs.make(tmp_path / "run", steps=1)
    qat = json.loads((run.checkpoint / "qat.json").read_text())
    qat["qat_config"]["quantizer"] = "gptq"
    (run.checkpoint / "qat.json").write_text(json.dumps(qat))
    seal_checkpoint(run.checkpoint)  # a deliberate edit: record it, or the checksum refuses it
    with pytest.raises(ConvertError, match=r"qat.json.*quantizer='gptq'"):
        convert(run.path, tmp_path / "out")
    config = json.loads((run.checkpoint / "config.json").read_text())
    (run.checkpoint / "config.json").write_text(json.dumps({**config, "model_type": "gpt9"}))
    seal_checkpoint(run.checkpoint)
    with pytest.raises(ConvertError, match=r"gpt9"):
        convert(run.checkpoint, tmp_path / "out", ptq=True)
    # 1-bit sign (research only) has no MLX format.
    cfg = QATConfig(weights=spec(bits=2), quantizer="lsq")
    path, layer = next(qat_layers(run.model))
    layer.quantizer = LSQQuantizer(1, 64, layer.weight.shape)
    with pytest.raises(ConvertError, match=rf"{path}: unsupported export format.*sign"):
        quantize_model(run.model, cfg)
    assert not (tmp_path / "out").exists()


def test_cli_errors_exit_2_without_traceback(tmp_path):
    proc = run_cli(tmp_path / "missing", "--mlx-path", tmp_path / "out", check=False)
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "Traceback" not in proc.stderr
    assert str(tmp_path / "missing") in proc.stderr


# ---- atomic output ------------------------------------------------------------------------


def test_interrupted_convert_leaves_nothing_loadable(tmp_path, monkeypatch, runs):
    from mlx_lm import load

    import mlx_qat.convert.api as api

    run = runs.make(tmp_path / "run")
    out = tmp_path / "out"
    seen = {}

    def crash(path, *args, **kwargs):
        # Weights are on disk, the tokenizer and config.json not yet: a kill here must leave
        # no loadable model, under the final name or the temporary one.
        seen["tmp"] = path
        assert (path / "model.safetensors").exists() and not out.exists()
        with pytest.raises(Exception):  # noqa: B017 - mlx_lm raises FileNotFoundError
            load(str(path))
        raise RuntimeError("disk full")

    monkeypatch.setattr(api, "save_tokenizer", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        convert(run.path, out)
    assert ".tmp-" in seen["tmp"].name
    assert not out.exists() and not seen["tmp"].exists()


# ---- parity check -------------------------------------------------------------------------


def test_parity_failure_is_an_error_and_writes_nothing(tmp_path, monkeypatch, runs):
    import mlx_qat.convert.pack as pack

    run = runs.make(tmp_path / "run")
    cast = pack.cast_model

    def wrong_grid(model, dtype, scale_dtype=None):
        cast(model, dtype, scale_dtype)
        layer = model.model.layers[0].mlp.down_proj
        layer.scales = layer.scales * 2.0  # a grid the model was not trained on

    monkeypatch.setattr(pack, "cast_model", wrong_grid)
    with pytest.raises(ParityError, match=r"parity check failed.*--parity-tolerance") as err:
        convert(run.path, tmp_path / "out")
    assert err.value.report.rel_diff > 1e-3
    assert not (tmp_path / "out").exists()
    loose = convert(run.path, tmp_path / "out", parity_tolerance=1.0)
    assert loose.parity["passed"]
    skipped = convert(run.path, tmp_path / "out2", parity_check=False)
    assert skipped.parity is None and "disabled" in skipped.parity_skipped


def test_parity_without_run_data_is_skipped_unless_given(tmp_path, tiny_data, caplog, runs):
    run = runs.make(tmp_path / "run")
    (run.path / "config.yaml").unlink()
    result = convert(run.path, tmp_path / "out")
    assert result.parity is None and "--parity-data" in result.parity_skipped
    assert "parity check skipped" in caplog.text
    text = tmp_path / "val.txt"
    text.write_text("The king is dead; long live the king.\n\nA second document, short.\n" * 20)
    result = convert(run.path, tmp_path / "out2", parity_data=text)
    assert result.parity["passed"] and "tokenized" in result.parity["data"]
    result = convert(run.path, tmp_path / "out3", parity_data=tiny_data.path, parity_batches=1)
    assert result.parity["passed"] and result.parity["num_batches"] == 1


# ---- slow: the real trainer, then convert, then mlx_lm in a fresh process -------------------


@pytest.mark.slow
@pytest.mark.parametrize("quantizer,bits", [("lsq", 2), ("learned_affine", 4), ("minmax", 3)])
def test_trainer_run_converts_and_serves(quantizer, bits, tmp_path, tiny_data):
    from mlx_qat.checkpoint import build_model

    run = tmp_path / "run"
    train = [sys.executable, "-m", "mlx_qat", "train", "--data", str(tiny_data.path)]
    train += ["--preset", "d2", "--tokens", "40000", "--batch-size", str(BATCH)]
    train += ["--seq-len", str(SEQ_LEN), "--eval-batches", str(EVAL_BATCHES), "--out", str(run)]
    train += ["--quantizer", quantizer, "--bits", str(bits), "--qat-fraction", "0.5", "--quiet"]
    proc = subprocess.run(train, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr
    ref = reference_loss(build_model(run), tiny_data)

    run_cli(run, "--mlx-path", tmp_path / "f32")
    got = fresh_load(tmp_path / "f32", tiny_data)
    assert len(got["tokens"]) >= 1 and abs(got["loss"] - ref) / ref <= 1e-4
    run_cli(run, "--mlx-path", tmp_path / "bf16", "--dtype", "bfloat16")
    got = fresh_load(tmp_path / "bf16", tiny_data)
    assert abs(got["loss"] - ref) / ref <= 5e-3  # the documented bfloat16 tolerance
    ptq = run_cli(run, "--mlx-path", tmp_path / "ptq", "--ptq")
    assert "ptq export" in ptq.stdout and "ok" in ptq.stdout
