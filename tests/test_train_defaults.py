"""Fine-tuning defaults (`train/defaults.py`): a `--model` run left to its defaults trains with
a fine-tune's settings, not a pretraining run's; whatever the user gives wins; the resolved
values are what config.yaml, the hash and a resume see."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from test_train_fixtures import tiny_data_dir  # noqa: F401
from tiny_models import float_model_dir

from mlx_qat.cli.train import parse_args
from mlx_qat.train.config import TrainConfig
from mlx_qat.train.metrics import read_metrics

# at the default 4 bits the grid's LR is 7 / 15 of the weights' (`test_the_grid_lr_follows_the_bits`)
FINETUNE = dict(lr=1e-4, qat_fraction=1.0, weight_decay=0.0, quantizer_lr_scale=7 / 15)
SCRATCH = dict(lr=3e-3, qat_fraction="auto", weight_decay=0.1, quantizer_lr_scale=0.03)


def _train(*args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mlx_qat", "train", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_model_runs_take_the_fine_tune_defaults_from_the_command_line(tiny_data_dir, tmp_path):  # noqa: F811
    src, _ = float_model_dir(tmp_path / "float_model", vocab=512)
    run = tmp_path / "run"
    args = ["--model", src, "--data", tiny_data_dir, "--out", run, "--tokens", 4 * 2 * 32,
            "--batch-size", 2, "--seq-len", 32, "--eval-batches", 1, "--final-eval-batches", 1,
            "--no-compile", "--quiet", "--quantizer", "learned_affine", "--objective", "kd"]  # fmt: skip
    proc = _train(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert {k: saved[k] for k in FINETUNE} == FINETUNE
    assert saved["scale_grad"] == "fixed_codes" and saved["kd_temperature"] == 2.0
    plan = json.loads((run / "result.json").read_text())["plan"]
    assert (plan["fp_steps"], plan["qat_steps"]) == (0, 4)  # QAT from the first step
    assert max(r["lr"] for r in read_metrics(run, "train")) <= 1e-4
    # the same command resumes it: the defaults resolve the same way
    again = _train(*args, "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    # and the saved config alone repeats it
    assert TrainConfig.from_dict(saved).hash() == parse_args([*map(str, args)]).hash()


def test_given_settings_beat_the_fine_tune_defaults(tmp_path):
    model = ["--model", str(tmp_path / "m")]
    assert {k: getattr(parse_args(model), k) for k in FINETUNE} == FINETUNE
    assert {k: getattr(parse_args([]), k) for k in SCRATCH} == SCRATCH  # from scratch
    given = ["--lr", "3e-3", "--qat-fraction", "auto", "--weight-decay", "0.1"]
    given += ["--quantizer-lr-scale", "0.03", "--quantizer", "learned_affine"]
    given += ["--scale-grad", "ste", "--objective", "mix", "--kd-temperature", "1"]
    c = parse_args(model + given)
    assert {k: getattr(c, k) for k in SCRATCH} == SCRATCH
    assert (c.scale_grad, c.kd_temperature) == ("ste", 1.0)
    # YAML counts as given, and the command line still beats it
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.001\nqat-fraction: 0.5\nweight_decay: 0.05\n")
    c = parse_args([*model, "--config", str(path), "--weight-decay", "0.2"])
    assert (c.lr, c.qat_fraction, c.weight_decay, c.quantizer_lr_scale) == (1e-3, 0.5, 0.2, 7 / 15)
    # the conditional ones follow the quantizer and the objective
    c = parse_args(model)
    assert (c.scale_grad, c.kd_temperature) == ("ste", 1.0)  # minmax, ce
    c = TrainConfig(model="m", quantizer="learned_affine", objective="mix")
    assert (c.scale_grad, c.kd_temperature) == ("fixed_codes", 2.0)
    # the hash of a from-scratch config is the one it had before the defaults moved
    assert TrainConfig().hash() == "8e66cf49c7511190"


def test_the_grid_lr_follows_the_bits():
    """A fine-tune's grid LR keeps its step relative to the grid's scale (∝ 1 / (2^bits − 1))
    what it is at 3 bits: the weights' LR at 2 and 3 bits, 7 / 255 of it at 8 (where the 3-bit
    recipe's grid LR left a model 2 nats above its float loss)."""
    scale = {b: TrainConfig(model="m", bits=b).quantizer_lr_scale for b in (2, 3, 4, 8)}
    assert scale == {2: 1.0, 3: 1.0, 4: 7 / 15, 8: 7 / 255}
    assert TrainConfig(model="m", bits=8, quantizer_lr_scale=1.0).quantizer_lr_scale == 1.0
    assert TrainConfig(bits=8).quantizer_lr_scale == 0.03  # from scratch: unchanged


def test_help_names_the_fine_tune_defaults(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for flag, shown in [
        ("--lr LR", "(default: 0.003; with --model: 1e-4)"),
        ("--qat-fraction QAT_FRACTION", "(default: auto; with --model: 1)"),
        ("--weight-decay WEIGHT_DECAY", "(default: 0.1; with --model: 0)"),
        (
            "--quantizer-lr-scale QUANTIZER_LR_SCALE",
            "(default: 0.03; with --model: min(1, 7 / (2^bits - 1)))",
        ),
        (
            "--scale-grad {ste,fixed_codes}",
            "with --model: fixed_codes with --quantizer learned_affine",
        ),
        ("--kd-temperature KD_TEMPERATURE", "with --model: 2 with --objective kd or mix"),
    ]:
        start = out.index(f" {flag} ")  # the flag's own line, not the usage's [--flag]
        assert shown in out[start : start + 400], flag
