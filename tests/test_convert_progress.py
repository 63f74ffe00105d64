"""mlx_qat.convert.parity's progress: the parity evaluations (minutes for a 135M model on a
CPU) log what they evaluate, how far they are and the loss, through logging; --quiet silences
them."""

from __future__ import annotations

import logging
import re

from test_convert_fixtures import EVAL_BATCHES, run_cli

import mlx_qat.convert.parity as parity
from mlx_qat.cli.convert import main as convert_main


def test_parity_evaluations_log_progress_unless_quiet(tmp_path, runs, monkeypatch, caplog, capsys):
    run = runs.make(tmp_path / "run")
    proc = run_cli(run.path, "--mlx-path", tmp_path / "a")
    lines = [s for s in proc.stderr.splitlines() if s.startswith("[INFO] parity: ")]
    # a QAT export: the model before export, its float weights, PTQ, the exported directory
    started = [s for s in lines if re.search(rf", {EVAL_BATCHES} batch\(es\) of \d+ tokens", s)]
    done = [s for s in lines if re.search(r": loss \d+\.\d{6} \(\d+\.\d s\)$", s)]
    assert len(started) == len(done) == 4, proc.stderr
    assert "the exported directory (mlx-lm): loss" in done[-1]
    # every batch reached, when the progress interval has passed (here: always)
    monkeypatch.setattr(parity, "PROGRESS_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger="mlx_qat"):
        assert convert_main([str(run.path), "--mlx-path", str(tmp_path / "b")]) == 0
    reached = [r.getMessage() for r in caplog.records if ", batch " in r.getMessage()]
    assert len(reached) == 4 * (EVAL_BATCHES - 1), reached
    assert all(re.search(rf", batch [1-9]/{EVAL_BATCHES} \(\d+ s\)$", m) for m in reached)
    capsys.readouterr()
    assert convert_main([str(run.path), "--mlx-path", str(tmp_path / "c"), "--quiet"]) == 0
    assert "parity:" not in capsys.readouterr().err
