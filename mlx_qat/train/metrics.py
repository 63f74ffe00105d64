"""`metrics.jsonl`: one JSON object per line, appended as training goes.

Records carry a `kind`:

- `"train"`: `step` (steps completed), `phase`, `lr`, `loss`, `grad_norm`, `tokens`,
  `tokens_per_s`, `step_s`, `peak_memory_mb`, `epoch`; in the QAT phase also the last step's
  `transition_rate` (share of integer codes it changed), `transition_rate_ema`,
  `transition_rate_layers` ({layer path: rate}), `transition_distance` (mean distance to the
  nearest transition point, in grid steps; `transitions.py`), and with `lr_control: trs`
  `trs_u` (the quantized weights' LR; `trs_u_layers` per layer), `trs_target`, `trs_t`.
- `"eval"`: `step`, `phase`, and `fp` / `qat` / `ptq` ({loss, bpb, tokens}), `gap_recovered`.
- `"switch"`: `step`, the FP→QAT switch (fake quant on from here).
- With `basin_monitor` (`basin.py`): `"basin_reference"` at the switch, `inward_cos*` on the
  QAT phase's `"eval"` lines, one `"basin_reentry"`.
- `"error"`: `step`, `message` (e.g. a non-finite loss).

Checkpoints record how many lines the file had when they were saved; a resumed run truncates
the file back to that many lines, so its metrics continue exactly where the checkpoint was.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

from ..fileio import atomic_write_text

METRICS = "metrics.jsonl"


def _clean(value):
    # JSON has no NaN/inf: write them as strings so the file stays parseable.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class MetricsWriter:
    """Appends records to `run_dir/metrics.jsonl` (line-buffered, flushed per record)."""

    def __init__(
        self,
        run_dir: str | os.PathLike,
        keep_lines: int | None = None,
        on_write: Callable[[dict], None] | None = None,
    ):
        """Open for appending (with `keep_lines`, truncated to that many lines first);
        `on_write(record)` sees each record as written."""
        self.path = Path(run_dir) / METRICS
        self.lines = 0
        self.on_write = on_write
        if keep_lines is not None and self.path.exists():
            kept = self.path.read_text(encoding="utf-8").splitlines(keepends=True)[:keep_lines]
            atomic_write_text(self.path, "".join(kept))
            self.lines = len(kept)
        elif keep_lines is None and self.path.exists():
            self.path.unlink()
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        record = _clean(record)
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()
        self.lines += 1
        if self.on_write is not None:
            self.on_write(record)

    def close(self) -> None:
        self._f.close()


def read_metrics(run_dir: str | os.PathLike, kind: str | None = None) -> list[dict]:
    """Records of `run_dir/metrics.jsonl` (only those of `kind` when given)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            if kind is None or rec.get("kind") == kind:
                out.append(rec)
    return out


class NullMetrics:
    """What ranks other than 0 of a distributed run write metrics to: nothing."""

    lines = 0

    def write(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass
