"""Data-parallel training with MLX's ring backend: 2 local processes started by `mlx.launch`.

One launch trains two tiny runs through the FP→QAT switch (A: one micro-batch, min/max
quantizer, periodic evaluations and checkpoints; B: two accumulated micro-batches and the
learned-affine quantizer, whose scale and bias gradients are averaged too). Each rank saves its
weights at the end of the FP phase, one step after the switch (the quantizers initialised from
the weights) and at the end; the same runs are trained in one process with the same global
batch.

Tolerance against the single process: the two processes compute the same global gradient with
another float32 summation order (each sums the gradient over its half of the rows, the
all-reduce adds the halves; the evaluation adds per-rank sums), so the losses differ by float32
rounding: at most ~1.5e-6 nats in the FP phase here (checked at 2e-5). Rounding to a grid
amplifies it: a weight within rounding error of a grid step's midpoint can round to the
neighbouring grid point in one run and not in the other, so QAT-phase losses and every PTQ
evaluation drift apart faster (up to ~1e-4 nats after 8 QAT steps here; checked at 3e-3, still
far below the loss's own step-to-step change). Between ranks nothing differs: weights are
compared bit for bit, and a resumed distributed run is compared bit for bit with the
uninterrupted one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import mlx.core as mx
import pytest
from mlx_launch import free_port_pair, ring_command
from test_train_fixtures import REPO, tiny_config, tiny_data_dir  # noqa: F401

from mlx_qat.checkpoint import list_checkpoints
from mlx_qat.train import train
from mlx_qat.train.metrics import read_metrics

pytestmark = pytest.mark.distributed

TPS = 4 * 32
FP_TOL, QAT_TOL = 2e-5, 3e-3

DRIVER = """
import json, os, sys, time
import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_qat.cli.common import setup_logging
from mlx_qat.train import TrainConfig, train
from mlx_qat.train.dist import DistributedError, process_rank

setup_logging(False)  # INFO; the trainer lowers ranks other than 0 to warnings
spec = json.loads(open(sys.argv[1]).read())
rank = process_rank()
open(os.path.join(spec["dir"], f"pid{rank}"), "w").write(str(os.getpid()))
for name, d in spec["runs"].items():
    if rank:  # rank 1 gets another --out: it must write nothing at all
        d = {**d, "out": d["out"] + "-rank1"}
    dumps = set(spec["dumps"].get(name, []))

    def on_step(t, s, name=name, dumps=dumps):
        if s in dumps:
            path = os.path.join(spec["dir"], f"{name}-r{rank}-s{s}.safetensors")
            mx.save_safetensors(path, dict(tree_flatten(t.model.parameters())))
        time.sleep(spec["delay"])

    try:
        train(TrainConfig(**d), on_step=on_step)
    except DistributedError as e:
        print(f"driver: {e}", file=sys.stderr, flush=True)
        sys.exit(4)
"""


def launch(script: Path, *args: str, n: int = 2) -> subprocess.Popen:
    """`mlx.launch --backend ring -n N --python PYTHON -- SCRIPT ARGS` from the repository."""
    return subprocess.Popen(
        ring_command(script, *args, n=n),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def run_driver(tmp: Path, runs: dict, dumps: dict | None = None, delay: float = 0.0):
    tmp.mkdir(parents=True, exist_ok=True)
    script = tmp / "driver.py"
    script.write_text(DRIVER)
    spec = tmp / "spec.json"
    cfgs = {k: c.to_dict() for k, c in runs.items()}
    spec.write_text(
        json.dumps({"dir": str(tmp), "runs": cfgs, "dumps": dumps or {}, "delay": delay})
    )
    return launch(script, str(spec))


def configs(data: Path, tmp: Path, tag: str) -> dict:
    return {
        "A": tiny_config(
            data, tmp / f"{tag}A", tokens=32 * TPS, eval_every=8, save_every=8, keep_checkpoints=4
        ),
        "B": tiny_config(
            data, tmp / f"{tag}B", tokens=16 * 2 * TPS, grad_accum=2, qat_fraction=0.5,
            quantizer="learned_affine", final_eval_batches=2,
        ),
    }  # fmt: skip


@pytest.fixture(scope="module")
def runs(tiny_data_dir, tmp_path_factory):  # noqa: F811
    """Both runs on 2 processes (one launch) and in this process."""
    tmp = tmp_path_factory.mktemp("dist")
    dist = configs(tiny_data_dir, tmp, "dist")
    plans = {"A": (24, 32), "B": (8, 16)}  # (FP steps, steps)
    dumps = {k: [fp, fp + 1, total] for k, (fp, total) in plans.items()}
    proc = run_driver(tmp, dist, dumps)
    out, _ = proc.communicate(timeout=300)
    assert "exited with code" not in out, out
    single = {k: train(c) for k, c in configs(tiny_data_dir, tmp, "single").items()}
    return {"tmp": tmp, "dist": dist, "single": single, "plans": plans, "dumps": dumps, "log": out}


def test_replicas_are_identical_after_every_phase(runs):
    tmp = runs["tmp"]
    for name, steps in runs["dumps"].items():
        for s in steps:
            w0 = mx.load(str(tmp / f"{name}-r0-s{s}.safetensors"))
            w1 = mx.load(str(tmp / f"{name}-r1-s{s}.safetensors"))
            assert set(w0) == set(w1)
            if s > runs["plans"][name][0] and name == "B":  # learned quantizers after the switch
                assert any(".quantizer." in k for k in w0)
            for k in w0:
                assert mx.array_equal(w0[k], w1[k]).item(), f"{name} step {s}: {k} differs"


def test_losses_match_one_process_with_the_same_global_batch(runs):
    for name, cfg in runs["dist"].items():
        fp_steps = runs["plans"][name][0]
        single = read_metrics(runs["single"][name]["run_dir"], "train")
        dist = read_metrics(cfg.out, "train")
        assert [r["step"] for r in dist] == [r["step"] for r in single]
        for a, b in zip(single, dist):
            tol = FP_TOL if a["step"] <= fp_steps else QAT_TOL
            assert b["loss"] == pytest.approx(a["loss"], abs=tol), (name, a["step"])
            assert b["tokens"] == a["tokens"] and b["lr"] == a["lr"]
        for kind in ("eval", "final_eval", "test_eval"):
            ev_s, ev_d = (
                read_metrics(runs["single"][name]["run_dir"], kind),
                read_metrics(cfg.out, kind),
            )
            assert [e["step"] for e in ev_d] == [e["step"] for e in ev_s]
            for a, b in zip(ev_s, ev_d):
                for mode in ("fp", "ptq"):
                    tol = FP_TOL if a["step"] <= fp_steps and mode == "fp" else QAT_TOL
                    assert b[mode]["tokens"] == a[mode]["tokens"]
                    assert b[mode]["loss"] == pytest.approx(a[mode]["loss"], abs=tol)


def test_rank_0_alone_writes_and_logs(runs):
    for cfg in runs["dist"].values():
        assert (Path(cfg.out) / "result.json").is_file()
        assert not Path(cfg.out + "-rank1").exists()
        result = json.loads((Path(cfg.out) / "result.json").read_text())
        assert result["world_size"] == 2
    # one "switch" line per run: rank 1 logs nothing at INFO
    assert runs["log"].count("switch to QAT at step") == 2, runs["log"]


def _wait(pred, timeout: float, what: str) -> None:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_a_killed_rank_stops_the_run_and_resume_gives_the_uninterrupted_curve(runs, tmp_path):
    """Kill rank 1 at step >= 18 (the last checkpoint is step 16, in the FP phase), check that
    rank 0 stops at once with a clear message, resume on 2 processes (across the switch) and
    compare every step with the uninterrupted distributed run, bit for bit."""
    data = Path(runs["dist"]["A"].data[0])
    cfg = configs(data, tmp_path, "kill")["A"]
    proc = run_driver(tmp_path / "k", {"A": cfg}, delay=0.15)
    _wait(
        lambda: len(read_metrics(cfg.out, "train")) >= 18 or proc.poll() is not None, 120, "step 18"
    )
    assert proc.poll() is None, proc.communicate()[0]
    os.kill(int((tmp_path / "k" / "pid1").read_text()), signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    # Rank 0 stops either on its own (the all-reduce fails: our message) or, first, by
    # mlx.launch, which terminates the other ranks as soon as one exits with an error.
    stopped = ("driver: rank 0: training step" in out and "--resume" in out) or (
        "Node with rank 0 exited with code -15" in out
    )
    assert stopped and "Node with rank 1 exited with code -9" in out, out
    steps = len(read_metrics(cfg.out, "train"))
    assert 18 <= steps < 32
    last = list_checkpoints(cfg.out)[-1][1]  # step 16 unless the machine stalled
    proc = run_driver(tmp_path / "r", {"A": replace(cfg, resume=True)})
    out, _ = proc.communicate(timeout=300)
    assert "exited with code" not in out and f"resumed from {last}" in out, out
    want = read_metrics(runs["dist"]["A"].out)
    got = read_metrics(cfg.out)
    keys = ("kind", "step", "phase", "lr", "loss", "grad_norm", "fp", "ptq", "qat")
    assert [{k: r.get(k) for k in keys} for r in got] == [{k: r.get(k) for k in keys} for r in want]


PEER = """
import os, sys, time
import mlx.core as mx
from mlx_qat.train.dist import DistributedError, Group
g = Group.init(timeout_s=float(sys.argv[2]))
if g.rank == 1 and sys.argv[1] == "hang":
    time.sleep(120)  # its process stays alive, its sockets open
if g.rank == 1 and sys.argv[1] == "die":
    os._exit(3)
try:
    with g.collective("a test exchange"):
        mx.eval(mx.distributed.all_sum(mx.ones(3), group=g.group, stream=mx.cpu))
except DistributedError as e:
    print(e, flush=True)
    sys.exit(4)
print("rank", g.rank, "passed the exchange")
"""


def test_a_hung_rank_makes_the_others_stop_after_the_timeout(tmp_path):
    script = tmp_path / "peer.py"
    script.write_text(PEER)
    t0 = time.monotonic()
    proc = launch(script, "hang", "2")
    out, _ = proc.communicate(timeout=90)
    assert "rank 0: a test exchange waited more than 2 s" in out, out
    assert "Node with rank 0 exited with code 4" in out and "passed the exchange" not in out
    assert time.monotonic() - t0 < 60


def test_a_dead_rank_makes_the_others_stop_with_a_message(tmp_path):
    """Two processes started as mlx.launch starts them (MLX_HOSTFILE, MLX_RANK), without the
    launcher, which would terminate rank 0 itself: rank 1 exits, rank 0's exchange fails."""
    script = tmp_path / "peer.py"
    script.write_text(PEER)
    p = free_port_pair()
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{p}"], [f"127.0.0.1:{p + 1}"]]))
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), "die", "60"],
            cwd=REPO,
            env={**os.environ, "MLX_HOSTFILE": str(hostfile), "MLX_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    out0, _ = procs[0].communicate(timeout=60)
    procs[1].communicate(timeout=60)
    assert procs[1].returncode == 3
    assert procs[0].returncode == 4, out0
    assert "rank 0: a test exchange:" in out0 and "connection to a peer was lost" in out0, out0
    assert "Another process of this run stopped" in out0
