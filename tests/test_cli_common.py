"""mlx_qat.cli.common: `--config NAME` finds a shipped config; errors are one line, `--debug`
(or MLX_QAT_DEBUG=1) raises them with their traceback, and an unexpected exception is reported
as a bug with its traceback saved to a crash file. The error paths run in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_qat.cli import VERBS
from mlx_qat.cli import main as cli_main
from mlx_qat.cli.common import CONFIGS, config_file, shipped_configs
from mlx_qat.cli.train import parse_args
from mlx_qat.train.config import TrainConfig

# --- --config NAME ------------------------------------------------------------------------------


def test_shipped_configs_are_package_data_and_valid():
    assert {"main", "mac", "sweep_tiny", "sweep_mac"} <= set(shipped_configs())
    assert CONFIGS.parent.name == "mlx_qat"  # inside the package: a wheel ships them
    for name in ("main", "mac"):
        assert isinstance(parse_args(["--config", name]), TrainConfig)


def test_config_name_resolves_when_no_such_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config_file("main") == CONFIGS / "main.yaml"
    assert config_file("main.yaml") == CONFIGS / "main.yaml"
    assert parse_args(["--config", "main"]).tokens == 3_000_000
    assert parse_args(["--config", "main", "--tokens", "5000"]).tokens == 5000  # CLI wins
    # a file of that name is what --config means: a path always wins over a shipped name
    (tmp_path / "main").write_text("tokens: 1234\n")
    assert parse_args(["--config", "main"]).tokens == 1234
    with pytest.raises(ValueError, match=r"--config nope: no such file.*\(mac, main, "):
        parse_args(["--config", "nope"])
    with pytest.raises(ValueError, match="no such file"):  # a path is never a name
        parse_args(["--config", "sub/main"])


def test_every_verb_takes_debug(capsys):
    for verb in VERBS:
        with pytest.raises(SystemExit) as e:
            cli_main([verb, "--help"])
        assert e.value.code == 0
        assert "--debug" in capsys.readouterr().out, verb


# --- errors, --debug, bugs (subprocesses) --------------------------------------------------------

# Runs `python -m mlx_qat ARGS` in-process after making `mlx_qat.train.plan_for_config` (which
# `mlx_qat.plan` calls) raise KeyError: an exception no validation raises, i.e. a bug.
BUG = """
import sys
import mlx_qat.train

def broken(cfg):
    raise KeyError("boom")

mlx_qat.train.plan_for_config = broken
from mlx_qat.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run(args, tmp_path, bug=False, **env):
    script = tmp_path / "bug.py"
    script.write_text(BUG)
    cmd = [sys.executable, *([script] if bug else ["-m", "mlx_qat"]), *map(str, args)]
    base = {k: v for k, v in os.environ.items() if k != "MLX_QAT_DEBUG"}
    env = {**base, "MLX_QAT_CACHE": str(tmp_path / "cache"), **env}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def crash_files(tmp_path) -> list[Path]:
    return sorted((tmp_path / "cache" / "crashes").glob("*.txt"))


def test_user_error_is_one_line_and_debug_raises_it(tmp_path):
    law = tmp_path / "missing.json"
    args = ["plan", "--tokens", "1e6", "--law", law]
    plain = run(args, tmp_path)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    (line,) = plain.stderr.strip().splitlines()
    assert line.startswith(f"mlx_qat.plan: error: --law {law}: cannot read it as a fit.json")
    for how in (
        run([*args, "--debug"], tmp_path),
        run(["--debug", *args], tmp_path),
        run(args, tmp_path, MLX_QAT_DEBUG="1"),
    ):
        assert how.returncode == 1, how.stderr
        assert "Traceback (most recent call last)" in how.stderr
        assert how.stderr.strip().splitlines()[-1].startswith(f"ValueError: --law {law}")
    assert not crash_files(tmp_path)  # bad input is not a bug


def test_bad_config_setting_with_debug_raises(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("no_such_setting: 1\n")
    plain = run(["plan", "--config", bad], tmp_path)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    debug = run(["plan", "--config", bad, "--debug"], tmp_path)
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert "ValueError: --config" in debug.stderr and "no_such_setting" in debug.stderr


def test_unexpected_exception_is_a_bug_with_a_crash_file(tmp_path):
    proc = run(["plan", "--tokens", "1e6"], tmp_path, bug=True)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr
    assert "mlx_qat.plan: internal error: KeyError: 'boom'" in err
    assert "this is a bug in mlx_qat" in err.lower() and "Traceback" not in err
    assert "in broken" in err  # where it was raised
    (crash,) = crash_files(tmp_path)
    assert str(crash) in err
    text = crash.read_text()
    assert text.startswith("command: mlx_qat.plan --tokens 1e6\n")
    assert "Traceback (most recent call last)" in text and 'raise KeyError("boom")' in text
    assert "mlx-lm " in text and "Python " in text  # the versions

    debug = run(["plan", "--tokens", "1e6", "--debug"], tmp_path, bug=True)
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == "KeyError: 'boom'"
    assert "bug in mlx_qat" not in debug.stderr and len(crash_files(tmp_path)) == 1


def test_bug_traceback_is_printed_when_no_crash_file_can_be_written(tmp_path):
    (tmp_path / "cache").write_text("a file, not a folder")
    proc = run(["plan", "--tokens", "1e6"], tmp_path, bug=True)
    assert proc.returncode == 1
    assert "could not save its traceback" in proc.stderr and "Traceback" in proc.stderr
    assert 'raise KeyError("boom")' in proc.stderr


def test_plan_of_a_shipped_config_by_name(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mlx_qat", "plan", "--config", "main", "--json"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["total_tokens"] == 3_000_000  # main.yaml's tokens
