"""The pieces of data-parallel training that need no second process: the single-process group
is a pass-through, rows are sliced by rank, the watchdog stops a process whose guarded call
overruns (and only then), a lost peer becomes a `DistributedError`, and `dist_timeout` does not
change what a run trains."""

from __future__ import annotations

import subprocess
import sys
import time

import mlx.core as mx
import pytest

from mlx_qat.train.config import TrainConfig
from mlx_qat.train.dist import DistributedError, Group
from mlx_qat.train.watchdog import EXIT_CODE, Watchdog


def test_a_single_process_group_passes_everything_through():
    g = Group.init()
    assert (g.rank, g.size, g.is_main, g.group, g.watchdog) == (0, 1, True, None, None)
    batch = mx.arange(12).reshape(4, 3)
    assert g.rows(batch) is batch
    arrays = {"w": mx.ones(3)}
    assert g.broadcast_arrays(arrays, "weights") is arrays
    assert g.gather_json({"a": 1}) == [{"a": 1}] and g.broadcast_json([1, 2]) == [1, 2]
    g.check_batch(7)
    with pytest.raises(KeyError):  # errors are not wrapped or exchanged
        with g.agreed("testing"), g.collective("testing"):
            raise KeyError("x")


def test_each_rank_trains_its_rows_of_the_global_batch():
    batch = mx.arange(8 * 3).reshape(8, 3)
    parts = [Group(rank=r, size=4).rows(batch) for r in range(4)]
    assert mx.array_equal(mx.concatenate(parts), batch).item()
    assert parts[1].shape == (2, 3) and parts[1][0, 0].item() == 6
    with pytest.raises(ValueError, match="batch_size=6: does not split over 4 processes"):
        Group(rank=0, size=4).check_batch(6)


def test_a_lost_peer_becomes_a_distributed_error_naming_the_fix():
    g = Group(rank=1, size=2, watchdog=Watchdog(60, 1))
    with pytest.raises(DistributedError, match=r"rank 1: training step 3: \[ring\].*--resume"):
        with g.collective("training step 3"):
            raise RuntimeError("[ring] connection to a peer was lost")
    with pytest.raises(RuntimeError, match="out of memory") as e:  # other errors pass unchanged
        with g.collective("training step 3"):
            raise RuntimeError("out of memory")
    assert type(e.value) is RuntimeError


GUARDED = """
import sys, time
from mlx_qat.train.watchdog import Watchdog
dog = Watchdog(float(sys.argv[1]), rank=3)
with dog.guard("training step 7"):
    time.sleep(float(sys.argv[2]))
time.sleep(1.0)  # unguarded: never stopped
print("finished")
"""


def _guarded(timeout: float, work: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", GUARDED, str(timeout), str(work)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_watchdog_stops_a_process_whose_guarded_call_overruns():
    t0 = time.monotonic()
    p = _guarded(0.5, 30)
    assert p.returncode == EXIT_CODE and "finished" not in p.stdout
    assert "rank 3: training step 7 waited more than 0.5 s" in p.stderr
    assert "--dist-timeout" in p.stderr and "--resume" in p.stderr
    assert time.monotonic() - t0 < 20


def test_the_watchdog_leaves_calls_within_the_timeout_alone():
    p = _guarded(2.0, 0.1)
    assert p.returncode == 0 and "finished" in p.stdout, p.stderr


def test_dist_timeout_is_checked_and_not_part_of_the_config_hash():
    assert TrainConfig(dist_timeout=5).hash() == TrainConfig().hash()
    with pytest.raises(ValueError, match="dist_timeout"):
        TrainConfig(dist_timeout=0)
