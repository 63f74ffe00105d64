"""`mlx_qat.eval --teacher` (mlx_qat.eval.check_teacher): the teacher must read the run's
tokens. A teacher with another tokenizer of the same size (a KL between unrelated models was
reported) or another vocabulary size (a raw MLX broadcast error) is refused by name before any
MLX op; the run's own checkpoints and its exported float model are accepted."""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_convert_fixtures import REPO
from tiny_models import float_model_dir

from mlx_qat.checkpoint import load_checkpoint
from mlx_qat.cli.eval import main as eval_main
from mlx_qat.convert import convert
from mlx_qat.data import tokenizer_sha256


def eval_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlx_qat", "eval", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )


def test_teacher_with_another_tokenizer_is_refused_naming_both(tmp_path, runs, hf_model):
    """hf_model: a d2 float model with its own 512-id byte-level BPE tokenizer; the run's is a
    512-piece sentencepiece one: same size, other tokens."""
    run = runs.make(tmp_path / "run")
    proc = eval_cli(run.path, "--teacher", hf_model, "--eval-batches", "1", "--out", tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("mlx_qat.eval: error: ") and "error" not in proc.stderr[: -len(err)]
    mine = load_checkpoint(run.checkpoint, optimizer=False).state["tokenizer_sha256"]
    theirs = tokenizer_sha256(hf_model)
    assert "\n" not in err and f"--teacher {hf_model}" in err
    assert mine[:12] in err and theirs[:12] in err and "its tokenizer" in err
    assert "kl" not in proc.stdout and not (tmp_path / "eval.json").exists()


def test_teacher_of_another_vocabulary_size_is_refused_before_any_mlx_op(tmp_path, runs, capsys):
    run = runs.make(tmp_path / "run")
    teacher, _ = float_model_dir(tmp_path / "t256", vocab=256)
    capsys.readouterr()  # what building the run's model logged
    assert eval_main([str(run.path), "--teacher", str(teacher), "--eval-batches", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "broadcast" not in err
    assert f"--teacher {teacher}: vocabulary 256" in err and "512" in err
    # the right size but no tokenizer to check
    bare, _ = float_model_dir(tmp_path / "t512", vocab=512)
    assert eval_main([str(run.path), "--teacher", str(bare), "--eval-batches", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"--teacher {bare}: holds no tokenizer" in err


@pytest.mark.parametrize("which", ["checkpoint", "exported"])
def test_the_runs_own_float_model_is_accepted_as_teacher(tmp_path, runs, capsys, which):
    run = runs.make(tmp_path / "run")
    if which == "checkpoint":
        teacher = run.checkpoint
    else:
        teacher = tmp_path / "float_model"
        convert(run.path, teacher, dequantize=True, parity_check=False)
    assert eval_main([str(run.path), "--teacher", str(teacher), "--eval-batches", "1"]) == 0
    assert "kl " in capsys.readouterr().out
