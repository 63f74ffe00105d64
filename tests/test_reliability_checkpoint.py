"""Issue 12, case 6: silent corruption. Every checkpoint file's sha256 is recorded (state.json
for the others, SHA256SUMS for all five) and verified on every load: resume, eval, branch and
convert (which reads checkpoints through `load_checkpoint`)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from dataclasses import replace

import pytest
from test_train_fixtures import tiny_config, tiny_data_dir  # noqa: F401

from mlx_qat.checkpoint import (
    CHECKSUMS,
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    seal_checkpoint,
)
from mlx_qat.cli.eval import main as eval_main
from mlx_qat.train import Trainer, train


@pytest.fixture(scope="module")
def run(tiny_data_dir, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("integrity") / "run"
    cfg = tiny_config(tiny_data_dir, out, tokens=8 * 4 * 32, save_every=4)
    train(cfg)
    return cfg


def _copy(cfg, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(cfg.out, dst)
    return replace(cfg, out=str(dst)), latest_checkpoint(dst)


def _flip_signs(path, at: int = 200, n: int = 16) -> None:
    """Flip the sign bit of `n` float32 values in the tensor data (same size, valid file)."""
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    for i in range(n):
        data[header + at + 4 * i + 3] ^= 0x80
    path.write_bytes(bytes(data))


def _refused_everywhere(cfg, ckpt, capsys, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match=message):  # resume
        Trainer(replace(cfg, resume=True)).setup()
    branch = replace(cfg, out=str(ckpt.parents[2] / "branch"), branch_from=str(ckpt))
    with pytest.raises(CheckpointError, match=message):
        Trainer(branch).setup()
    assert eval_main([str(ckpt), "--out", str(ckpt.parents[2] / "ev")]) == 1
    assert message in capsys.readouterr().err
    from mlx_qat.convert import convert

    with pytest.raises(ValueError, match=message):  # ConvertError is a ValueError
        convert(ckpt, ckpt.parents[2] / "exported")
    assert not (ckpt.parents[2] / "exported").exists()


def test_sign_flips_in_the_weights_are_refused_by_name(run, tmp_path, capsys):
    cfg, ckpt = _copy(run, tmp_path)
    _flip_signs(ckpt / "model.safetensors")
    _refused_everywhere(cfg, ckpt, capsys, "model.safetensors is corrupt or was edited")


def test_an_edited_state_json_step_is_refused(run, tmp_path, capsys):
    cfg, ckpt = _copy(run, tmp_path)
    state = json.loads((ckpt / "state.json").read_text())
    (ckpt / "state.json").write_text(json.dumps({**state, "step": 40}))
    _refused_everywhere(cfg, ckpt, capsys, "state.json is corrupt or was edited")


def test_edited_bits_in_qat_json_are_refused(run, tmp_path, capsys):
    cfg, ckpt = _copy(run, tmp_path)
    qat = json.loads((ckpt / "qat.json").read_text())
    qat["qat_config"]["weights"]["bits"] = 8
    (ckpt / "qat.json").write_text(json.dumps(qat))
    _refused_everywhere(cfg, ckpt, capsys, "qat.json is corrupt or was edited")


def test_optimizer_corruption_is_caught_when_it_is_read(run, tmp_path):
    cfg, ckpt = _copy(run, tmp_path)
    _flip_signs(ckpt / "optimizer.safetensors")
    load_checkpoint(ckpt, optimizer=False)  # eval and convert do not read it
    with pytest.raises(CheckpointError, match="optimizer.safetensors is corrupt or was edited"):
        Trainer(replace(cfg, resume=True)).setup()


def test_sha256sums_verifies_with_standard_tools_and_its_loss_is_refused(run, tmp_path):
    cfg, ckpt = _copy(run, tmp_path)
    names = sorted(line.split("  ")[1] for line in (ckpt / CHECKSUMS).read_text().splitlines())
    assert names == sorted(
        ["config.json", "model.safetensors", "optimizer.safetensors", "qat.json", "state.json"]
    )
    if shutil.which("sha256sum"):
        subprocess.run(["sha256sum", "-c", "--quiet", CHECKSUMS], cwd=ckpt, check=True)
    state = json.loads((ckpt / "state.json").read_text())
    assert state["format"] == "mlx_qat.checkpoint/2"
    assert set(state["files"]) == {
        "config.json", "model.safetensors", "optimizer.safetensors", "qat.json"
    }  # fmt: skip
    (ckpt / CHECKSUMS).unlink()
    with pytest.raises(CheckpointError, match=f"missing {CHECKSUMS}"):
        load_checkpoint(ckpt)


def test_checkpoints_from_before_checksums_load_with_a_warning(run, tmp_path, caplog):
    cfg, ckpt = _copy(run, tmp_path)
    state = json.loads((ckpt / "state.json").read_text())
    sizes = {k: v["bytes"] for k, v in state["files"].items() if k.endswith(".safetensors")}
    legacy = {k: v for k, v in state.items() if k != "format"}
    (ckpt / "state.json").write_text(json.dumps({**legacy, "files": sizes}))
    (ckpt / CHECKSUMS).unlink()
    with caplog.at_level(logging.WARNING, logger="mlx_qat"):
        assert load_checkpoint(ckpt).step == 8
    assert "NOT verified" in caplog.text
    seal_checkpoint(ckpt)  # the upgrade path: from here on it is verified
    _flip_signs(ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt"):
        load_checkpoint(ckpt)
