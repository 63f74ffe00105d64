"""Exact resume with a real kill: SIGKILL a training process at a random step, resume it,
and compare every step's loss with an uninterrupted run (bit for bit).

The kill step is drawn from a seeded generator and printed (with the step the process was
actually killed at and the checkpoint it resumed from), so a failure can be replayed: the
seed is $MLX_QAT_RESUME_SEED, default RESUME_SEED; set it to try other steps."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import mlx.core as mx
from test_train_fixtures import REPO, tiny_config, tiny_data_dir  # noqa: F401

from mlx_qat.checkpoint import list_checkpoints, load_checkpoint
from mlx_qat.train.metrics import read_metrics

RESUME_SEED = 12  # kill at step 37: QAT phase, 2 steps past the step-35 checkpoint
# The tiny model draws no random numbers, so the driver makes every step draw one, as dropout
# would: the loss (and so every gradient) is scaled by 1 + u/100, u ~ U(0, 1) from MLX's global
# RNG, which the trainer re-seeds from (seed, step). An exact resume must reproduce the draws.
DRIVER = """
import json, sys, time
import mlx.core as mx
import mlx_qat.train.step as train_step
from mlx_qat.train import TrainConfig, train
base_loss = train_step.loss_fn
train_step.loss_fn = lambda m, x, y: base_loss(m, x, y) * (1 + 0.01 * mx.random.uniform(shape=()))
cfg = TrainConfig(**json.loads(sys.argv[1]))
delay = float(sys.argv[2])
train(cfg, on_step=(lambda t, s: time.sleep(delay)) if delay else None)
"""


def _spawn(cfg, delay=0.0):
    d = cfg.to_dict()
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, json.dumps(d), str(delay)],
        cwd=REPO,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _train_steps(run) -> int:
    try:
        return len(read_metrics(run, "train"))
    except (OSError, ValueError):  # a line being written
        return 0


def test_sigkill_then_resume_reproduces_the_losses_exactly(tiny_data_dir, tmp_path):  # noqa: F811
    kw = dict(
        tokens=48 * 4 * 32,
        qat_fraction=0.4,  # FP steps 0..28, QAT 29..47: the kill may land on either side
        quantizer="lsq",
        save_every=5,
        eval_every=8,
        keep_checkpoints=2,
    )
    ref_cfg = tiny_config(tiny_data_dir, tmp_path / "ref", **kw)
    cut_cfg = tiny_config(tiny_data_dir, tmp_path / "cut", **kw)
    ref = _spawn(ref_cfg)
    seed = int(os.environ.get("MLX_QAT_RESUME_SEED", RESUME_SEED))
    kill_at = random.Random(seed).randint(7, 44)
    print(f"resume test: MLX_QAT_RESUME_SEED={seed} -> kill at step {kill_at}")
    cut = _spawn(cut_cfg, delay=0.05)
    deadline = time.time() + 240
    while _train_steps(tmp_path / "cut") < kill_at and cut.poll() is None:
        assert time.time() < deadline, "training did not progress"
        time.sleep(0.005)
    os.kill(cut.pid, signal.SIGKILL)
    cut.wait()
    where = f"MLX_QAT_RESUME_SEED={seed}, kill_at={kill_at}"
    assert cut.returncode == -signal.SIGKILL, f"not killed ({where}): {cut.stdout.read()}"
    killed_at = _train_steps(tmp_path / "cut")
    assert not (tmp_path / "cut" / "result.json").exists()
    saved = [s for s, _ in list_checkpoints(tmp_path / "cut")]
    assert saved and max(saved) <= killed_at, (where, killed_at, saved)
    msg = f"{where}: killed after step {killed_at}, resumed from step {max(saved)}"
    print(f"resume test: {msg}")
    resumed = _spawn(cut_cfg.__class__(**{**cut_cfg.to_dict(), "resume": True}))
    out_resumed = resumed.communicate(timeout=240)[0]
    out_ref = ref.communicate(timeout=240)[0]
    assert resumed.returncode == 0, out_resumed
    assert ref.returncode == 0, out_ref

    def losses(run):
        return [(r["step"], r["phase"], r["lr"], r["loss"]) for r in read_metrics(run, "train")]

    assert losses(tmp_path / "cut") == losses(tmp_path / "ref"), msg
    assert len(losses(tmp_path / "ref")) == 48
    evals = [read_metrics(r, "eval") for r in (tmp_path / "cut", tmp_path / "ref")]
    assert [(e["step"], e["fp"], e["qat"], e["ptq"]) for e in evals[0]] == [
        (e["step"], e["fp"], e["qat"], e["ptq"]) for e in evals[1]
    ], msg
    a, b = load_checkpoint(tmp_path / "cut"), load_checkpoint(tmp_path / "ref")
    assert a.step == b.step == 48
    for k, v in b.weights.items():
        assert mx.array_equal(a.weights[k], v), (k, msg)
    for k, v in b.optimizer_state.items():
        assert mx.array_equal(a.optimizer_state[k], v), (k, msg)
