"""Data-parallel training on MLX's distributed engine: one full replica per process.

`Group.init()` wraps `mx.distributed.init()`: a plain process gets a group of one, and every
method here is a pass-through. Started by `mlx.launch`, each process is one rank of n:

- **Batches**: every rank reads the single-process run's global batch `batch(i)` and trains its
  rows `[r·B/n, (r+1)·B/n)`; `B` must divide by n.
- **Gradients**: averaged over ranks inside the compiled step, before clipping (`step.py`);
  each rank's loss is the mean over its rows, so the result is the global batch's gradient and
  mean loss. Every rank applies the same update to the same weights: the replicas stay
  identical (ring all-reduce hands every rank the same sums).
- **Start-up**: rank 0 alone checks the run directory and reads the checkpoint; its position
  and every array go to the others (`broadcast_*`: an all-gather keeping rank 0's part bit for
  bit). The data must be the same prepared directory on every machine (checked by content key).
- **Evaluation**: rank r evaluates batches r, r + n, ...; the sums of loss × tokens and the
  token counts are gathered and added in rank order in float64, so every rank gets the same
  numbers (the single-process ones up to float32 summation order). With fewer batches than
  ranks, every rank evaluates all of them.
- **Failures**: `agreed(what)` makes a failure on any rank fail every rank with its message.
  `collective(what)` turns MLX's "connection to a peer was lost" into a `DistributedError` and
  arms the `Watchdog`: a rank that hangs stops the others after `--dist-timeout` seconds.

Rank 0 alone writes and logs at INFO; the other ranks log warnings only.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np

from ..eval_modes import MODES, all_minmax, bits_per_byte, eval_triple, gap_recovered
from .watchdog import Watchdog

logger = logging.getLogger(__name__)

# Words in the errors MLX's backends raise when a peer's connection is gone.
_LOST = ("peer", "connection", "socket", "[ring]", "[jaccl]", "[mpi]")


class DistributedError(RuntimeError):
    """Another process of a distributed run failed or stopped; this one stops too."""


def process_rank() -> int:
    """This process's rank in `mx.distributed.init()`'s group (0 without a launcher)."""
    return mx.distributed.init().rank()


def process_count() -> int:
    """The number of processes in `mx.distributed.init()`'s group (1 without a launcher)."""
    return mx.distributed.init().size()


@dataclass
class Group:
    """The processes of one data-parallel run (`size` 1: a plain single-process run)."""

    group: Any = None  # mx.distributed.Group when size > 1
    rank: int = 0
    size: int = 1
    watchdog: Watchdog | None = None

    @classmethod
    def init(cls, timeout_s: float = 300.0) -> Group:
        """The group `mx.distributed.init()` gives this process (ranks > 0: warnings only)."""
        g = mx.distributed.init()
        if g.size() == 1:
            return cls()
        if g.rank() > 0:
            log = logging.getLogger("mlx_qat")
            if log.getEffectiveLevel() < logging.WARNING:
                log.setLevel(logging.WARNING)
        return cls(g, g.rank(), g.size(), Watchdog(timeout_s, g.rank()))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def check_batch(self, batch_size: int) -> None:
        """Raise ValueError unless the global batch splits evenly over the ranks."""
        if batch_size % self.size:
            raise ValueError(
                f"batch_size={batch_size}: does not split over {self.size} processes; give a "
                f"multiple of {self.size} (each process trains batch_size / {self.size} rows "
                "of every global batch)"
            )

    def rows(self, batch):
        """This rank's rows of a global batch (of each array of a `(tokens, weights)` pair)."""
        if self.size == 1:
            return batch
        if isinstance(batch, tuple):
            return tuple(self.rows(b) for b in batch)
        k = batch.shape[0] // self.size
        return batch[self.rank * k : (self.rank + 1) * k]

    @contextlib.contextmanager
    def collective(self, what: str) -> Iterator[None]:
        """Run a block that waits for the other ranks, under the watchdog."""
        if self.size == 1:
            yield
            return
        try:
            with self.watchdog.guard(what):
                yield
        except RuntimeError as e:
            if isinstance(e, DistributedError) or not any(w in str(e) for w in _LOST):
                raise
            raise DistributedError(
                f"rank {self.rank}: {what}: {e}. Another process of this run stopped (its "
                "own output says why); this one stops too. Run the same command with "
                "--resume to continue from the last checkpoint"
            ) from e

    @contextlib.contextmanager
    def agreed(self, what: str) -> Iterator[None]:
        """Run a block on every rank; if it fails on any, it fails on all (the others raise a
        `DistributedError` naming it)."""
        if self.size == 1:
            yield
            return
        error = None
        try:
            yield
        except Exception as e:  # noqa: BLE001 - every failure must reach the other ranks
            error = e
        report = None if error is None else f"{type(error).__name__}: {error}"
        failed = [(r, m) for r, m in enumerate(self.gather_json(report, what)) if m]
        if error is not None:
            raise error
        if failed:
            r, m = failed[0]
            raise DistributedError(f"rank {self.rank}: stopped while {what}: rank {r} failed: {m}")

    def gather_json(self, obj: Any, what: str = "exchanging state") -> list:
        """Every rank's `obj` (JSON-able), in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        data = np.frombuffer(json.dumps(obj).encode("utf-8"), dtype=np.uint8)
        with self.collective(what):
            sizes = mx.distributed.all_gather(
                mx.array([data.size], dtype=mx.int32), group=self.group, stream=mx.cpu
            ).tolist()
            buf = np.zeros(max(sizes), dtype=np.uint8)
            buf[: data.size] = data
            got = mx.distributed.all_gather(mx.array(buf), group=self.group, stream=mx.cpu)
            got = np.array(got).reshape(self.size, -1)
        return [json.loads(got[r, : sizes[r]].tobytes().decode("utf-8")) for r in range(self.size)]

    def broadcast_json(self, obj: Any, what: str = "receiving rank 0's state") -> Any:
        """Rank 0's `obj` on every rank."""
        return self.gather_json(obj if self.is_main else None, what)[0]

    def broadcast_arrays(self, arrays: dict[str, mx.array], what: str) -> dict[str, mx.array]:
        """Rank 0's arrays on every rank, bit for bit; the other ranks' `arrays` give the keys,
        shapes and dtypes to receive (checked against rank 0's first)."""
        if self.size == 1:
            return arrays
        keys = sorted(arrays)  # one order on every rank, however each built its dict
        layout = [[k, list(arrays[k].shape), str(arrays[k].dtype)] for k in keys]
        main = self.broadcast_json(layout, f"receiving the layout of rank 0's {what}")
        with self.agreed(f"comparing the {what} with rank 0's"):
            if main != layout:
                diff = [a for a, b in zip(layout, main) if a != b] or layout[len(main) :]
                raise ValueError(
                    f"rank {self.rank}: the {what} differ from rank 0's ({len(layout)} arrays "
                    f"here, {len(main)} there; first difference: {diff[:1]}); every process "
                    "must run the same mlx_qat and MLX versions with the same settings"
                )
        out = {}
        with self.collective(f"receiving rank 0's {what}"):
            for k in keys:
                flat = arrays[k].reshape(-1)
                got = mx.distributed.all_gather(flat, group=self.group, stream=mx.cpu)
                out[k] = got[: flat.size].reshape(arrays[k].shape)
                mx.eval(out[k])
        return out

    def eval_triple(self, model, batches: Sequence[mx.array], bytes_per_token: float,
                    quantizers_ready: bool = True, teacher=None) -> dict:  # fmt: skip
        """`eval_modes.eval_triple` over `batches`, shared out among the ranks."""
        n = len(batches)
        if self.size == 1 or n < self.size:
            return eval_triple(model, batches, bytes_per_token, quantizers_ready, teacher)
        mine = [batches[i] for i in range(self.rank, n, self.size)]
        ev = eval_triple(model, mine, bytes_per_token, quantizers_ready, teacher)
        # loss x tokens recovers this rank's float32 sum; float64 keeps the counts exact
        row = []
        for mode in MODES:
            r = ev[mode]
            kl = r.get("kl", 0.0) * r["tokens"] if r and teacher is not None else 0.0
            row += [r["loss"] * r["tokens"], r["tokens"], kl] if r else [0.0, -1.0, 0.0]
        with self.collective("exchanging evaluation sums"):
            got = mx.distributed.all_gather(
                mx.array(row, dtype=mx.float64), group=self.group, stream=mx.cpu
            )
            sums = np.array(got).reshape(self.size, len(MODES), 3)
        out: dict = {}
        for j, mode in enumerate(MODES):
            if (sums[:, j, 1] < 0).any():  # a mode without a result (the same on every rank)
                out[mode] = None
                continue
            tokens = int(sums[:, j, 1].sum())
            loss = float(sums[:, j, 0].sum()) / tokens
            out[mode] = {
                "loss": loss,
                "bpb": bits_per_byte(loss, bytes_per_token),
                "tokens": tokens,
            }
            if teacher is not None:
                out[mode]["kl"] = float(sums[:, j, 2].sum()) / tokens
        loss = {m: (out[m]["loss"] if out[m] else None) for m in MODES}
        # as eval_triple: with min/max quantizers QAT is the PTQ of these weights, no gap
        same = all_minmax(model)
        out["gap_recovered"] = None if same else gap_recovered(loss["fp"], loss["qat"], loss["ptq"])
        return out
