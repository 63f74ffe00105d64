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
from mlx_qat.sweep import load_sweep
from mlx_qat.train.config import TrainConfig, load_config
from mlx_qat.train.metrics import read_metrics
from mlx_qat.train.phase_plan import auto_fraction, make_plan

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


def test_from_scratch_2_bit_runs_take_the_searched_recipe(tmp_path):
    """From scratch the grid LR and the QAT fraction follow the bits (issue #24's search,
    benchmarks/results/from_scratch_gap.md): at 2 bits 0.09x and twice the auto fraction, at
    3 and 4 bits 0.03x and the auto fraction itself; a fine-tune keeps 1x."""
    got = {
        b: (TrainConfig(bits=b).quantizer_lr_scale, TrainConfig(bits=b).auto_scale)
        for b in (2, 3, 4)
    }
    assert got == {2: (0.09, 2.0), 3: (0.03, 1.0), 4: (0.03, 1.0)}
    assert TrainConfig(model="m", bits=2).auto_scale == 1.0
    assert TrainConfig(bits=2, auto_scale=1.5, quantizer_lr_scale=0.03).auto_scale == 1.5
    # the plan: f = min(1, k exp(-a / ln S)), S = tokens / bytes
    for bits, k in ((2, 2.0), (4, 1.0)):
        plan = make_plan(TrainConfig(bits=bits, tokens=3_000_000), 10**5, 10**5, 10**5)
        want = min(1.0, k * auto_fraction(30.0))
        assert plan.fraction == pytest.approx(want, abs=1 / plan.total_steps)
        assert plan.f_hat == pytest.approx(auto_fraction(30.0))
    assert make_plan(TrainConfig(bits=2, auto_scale=50.0), 10**5, 10**5, 10**5).fraction == 1.0
    with pytest.raises(ValueError, match="auto_scale"):
        TrainConfig(auto_scale=0.0)
    # runs from before the 2-bit recipe keep their hash (they took 0.03x and 1x) ...
    assert TrainConfig(bits=2, quantizer_lr_scale=0.03, auto_scale=1.0).hash() == "bbf6e4459640414b"
    assert TrainConfig(bits=3).hash() == "5e6d306e6f1c0209"
    assert TrainConfig(bits=2).hash() != "bbf6e4459640414b"
    # ... and their own config.yaml (the resolved one, without auto_scale) reads back as 1x,
    # while a hand-written YAML without it takes the new default
    old = TrainConfig(bits=2, quantizer_lr_scale=0.03, auto_scale=1.0)
    text = old.to_yaml().replace("auto_scale: 1.0\n", "")
    assert "auto_scale" not in text
    (tmp_path / "run.yaml").write_text(text)
    assert load_config(tmp_path / "run.yaml").hash() == "bbf6e4459640414b"
    (tmp_path / "mine.yaml").write_text("bits: 2\n")
    assert load_config(tmp_path / "mine.yaml").auto_scale == 2.0
    # a sweep's `auto` is the predictor itself at any bits
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        "out: o\ndata: d\ngrids:\n  - {models: [d2], tokens: [1e5], bits: [2], fractions: [auto]}\n"
    )
    sw = load_sweep(sweep)
    assert [sw.config(p).auto_scale for p in sw.points] == [1.0]


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
            "(default: 0.09 at 2 bits, else 0.03; with --model: min(1, 7 / (2^bits - 1)))",
        ),
        (
            "--scale-grad {ste,fixed_codes}",
            "with --model: fixed_codes with --quantizer learned_affine",
        ),
        ("--kd-temperature KD_TEMPERATURE", "with --model: 2 with --objective kd or mix"),
    ]:
        start = out.index(f" {flag} ")  # the flag's own line, not the usage's [--flag]
        assert shown in out[start : start + 400], flag
