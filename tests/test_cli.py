"""Config plumbing: CLI > YAML > defaults, the resolved config, the `python -m mlx_qat` verbs."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from mlx_qat.cli import main as cli_main
from mlx_qat.cli.train import parse_args
from mlx_qat.train.config import TrainConfig, load_config


def test_defaults():
    c = parse_args([])
    assert c == TrainConfig()
    assert (
        c.qat_fraction == "auto" and c.pipeline == "fused" and c.optimizer_state_at_switch == "keep"
    )


def test_precedence_cli_over_yaml_over_defaults(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: 0.01\nbits: 2\nqat-fraction: 0.4\nbatch_size: 8\n")
    c = parse_args(["--config", str(f), "--bits", "3", "--no-compile"])
    assert c.bits == 3  # CLI beats YAML
    assert c.lr == 0.01 and c.batch_size == 8  # YAML beats defaults (kebab or snake keys)
    assert c.qat_fraction == 0.4
    assert c.compile is False
    assert c.seq_len == TrainConfig().seq_len  # default


def test_unknown_yaml_key_is_named(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("learning_rate: 0.01\n")
    with pytest.raises(ValueError, match="learning_rate"):
        parse_args(["--config", str(f)])


def test_resolved_config_round_trips(tmp_path):
    c = TrainConfig(lr=1e-3, data=["a", "b"], qat_fraction=0.3, warmup_tokens=1000)
    (tmp_path / "config.yaml").write_text(c.to_yaml())
    again = load_config(tmp_path / "config.yaml")
    assert again == c and again.hash() == c.hash()
    # Book-keeping fields do not change the hash; training fields do.
    assert TrainConfig(out="x", quiet=True, eval_every=7).hash() == TrainConfig().hash()
    assert TrainConfig(lr=1e-4).hash() != TrainConfig().hash()


def test_validation_messages_name_the_field():
    with pytest.raises(ValueError, match="pipeline"):
        TrainConfig(pipeline="fast")
    with pytest.raises(ValueError, match="warmup_tokens and warmup_steps"):
        TrainConfig(warmup_tokens=10, warmup_steps=1)
    with pytest.raises(ValueError, match="min_lr"):
        TrainConfig(lr=1e-3, min_lr=1e-2)
    with pytest.raises(ValueError, match="final_eval_batches=-1.*whole validation split"):
        TrainConfig(final_eval_batches=-1)


def test_argparse_choices_and_help(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--cooldown-shape", "exp"])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    out = capsys.readouterr().out
    for flag in ("--qat-fraction", "--optimizer-state-at-switch", "--resume", "--no-compile"):
        assert flag in out


def test_module_verbs(capsys):
    assert cli_main(["nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown verb 'nope'" in err
    for verb in ("data", "train", "eval", "convert", "plan", "check", "sweep", "fit", "diagnose"):
        assert f"\n  {verb} " in err
    r = subprocess.run(
        [sys.executable, "-m", "mlx_qat", "plan", "--preset", "d2", "--tokens", "1000000"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"MLX_QAT_NO_OPENBLAS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr
    assert "tokens/byte S" in r.stdout


def test_config_yaml_is_plain_yaml():
    d = yaml.safe_load(TrainConfig().to_yaml())
    assert d["pipeline"] == "fused" and "out" in d


def test_token_counts_accept_scientific_and_suffixes():
    from mlx_qat.train.config import parse_count

    assert parse_count("3e6") == parse_count("3M") == parse_count("3_000_000") == 3_000_000
    assert parse_count("2.5k") == 2500 and parse_count(7) == 7
    assert parse_args(["--tokens", "20e6"]).tokens == 20_000_000
    assert TrainConfig(tokens="1.5B").tokens == 1_500_000_000
    for bad in ("abc", "1.5", "3x"):
        with pytest.raises(ValueError, match="tokens"):
            TrainConfig(tokens=bad)
