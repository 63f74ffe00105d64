"""The run rows the fitter reads (one per finished run, as a sweep's `results.jsonl` holds them).

Row schema: a JSON object per run. Required keys (what the sweep must write):

    N           parameter count the law's S uses: total parameters, tied embedding counted
                once (S = D / (N·B/8)). Another count can be fitted with `n_key=`, e.g.
                "N_nonemb" when the sweep also writes it.
    D           total training tokens, = D_fp + D_qat (checked to 1e-6 relative).
    D_fp        tokens of the full-precision phase (≥ 0).
    D_qat       tokens of the QAT phase (≥ 0).
    bits        QAT target width (1–8) of the weights; null or 16 for a pure-FP run.
    final_loss  final validation loss in nats/token on the fixed held-out set: of the
                fake-quantized model for a QAT run, of the FP model for an FP run.

Optional keys: `seed` (seeds are averaged when locating empirical optima; the law fit keeps
every run) and `pipeline` (rows of two pipelines are refused: the law describes one). Other
keys are ignored.

Row kinds: FP (bits null/16, must have D_qat = 0), QAT (bits < 16, D_fp > 0, D_qat > 0),
QAT-from-scratch (D_fp = 0: only in the empirical optima, as f = 1) and PTQ (D_qat = 0:
counted and skipped, the law is not meant for S_qat = 0).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..fileio import read_rows
from .law import FP_BITS

REQUIRED = ("N", "D", "D_fp", "D_qat", "bits", "final_loss")


@dataclass(frozen=True)
class Rows:
    """Runs as float64 columns; bits is NaN on FP rows, seed NaN where absent."""

    N: np.ndarray
    D_fp: np.ndarray
    D_qat: np.ndarray
    bits: np.ndarray
    loss: np.ndarray
    seed: np.ndarray

    def __len__(self) -> int:
        return len(self.loss)

    @property
    def D(self) -> np.ndarray:
        return self.D_fp + self.D_qat

    @property
    def f(self) -> np.ndarray:
        return self.D_qat / self.D

    @property
    def fp(self) -> np.ndarray:
        return np.isnan(self.bits)

    @property
    def qat(self) -> np.ndarray:  # the rows the law describes: QAT after a non-empty FP phase
        return ~self.fp & (self.D_qat > 0) & (self.D_fp > 0)

    @property
    def from_scratch(self) -> np.ndarray:
        return ~self.fp & (self.D_qat > 0) & (self.D_fp == 0)

    @property
    def ptq(self) -> np.ndarray:
        return ~self.fp & (self.D_qat == 0)

    @property
    def fittable(self) -> np.ndarray:
        return self.fp | self.qat

    def take(self, idx) -> Rows:
        """A subset (boolean mask or integer indices, repeats allowed)."""
        return Rows(*(np.asarray(getattr(self, k))[idx] for k in _COLUMNS))


_COLUMNS = ("N", "D_fp", "D_qat", "bits", "loss", "seed")


def parse_rows(rows: Iterable[dict], n_key: str = "N") -> Rows:
    """Validate row dicts (module docstring schema; `n_key` holds the parameter count) and
    return them as columns; ValueError naming the row index and the problem."""
    cols: dict[str, list] = {k: [] for k in _COLUMNS}
    pipelines = set()
    for i, r in enumerate(rows):
        missing = [k for k in (n_key, *REQUIRED[1:]) if k not in r]
        if missing:
            raise ValueError(f"row {i}: missing keys {missing} (required: {list(REQUIRED)})")
        n, d, dfp, dq, loss = (float(r[k]) for k in (n_key, "D", "D_fp", "D_qat", "final_loss"))
        b = r["bits"]
        bits = math.nan if b is None or float(b) >= FP_BITS else float(b)
        if not (n > 0 and dfp >= 0 and dq >= 0 and dfp + dq > 0):
            raise ValueError(f"row {i}: need {n_key} > 0, D_fp >= 0, D_qat >= 0, D > 0; got {r}")
        if abs(dfp + dq - d) > 1e-6 * d:
            raise ValueError(f"row {i}: D={d} but D_fp + D_qat = {dfp + dq}; fix the sweep row")
        if math.isnan(bits) and dq > 0:
            raise ValueError(f"row {i}: bits={b!r} marks an FP run but D_qat={dq} > 0")
        if not (loss > 0 and math.isfinite(loss)):
            raise ValueError(f"row {i}: final_loss={r['final_loss']!r} must be finite and > 0")
        if "pipeline" in r:
            pipelines.add(r["pipeline"])
        seed = r.get("seed")
        for k, v in zip(_COLUMNS, (n, dfp, dq, bits, loss, math.nan if seed is None else seed)):
            cols[k].append(float(v))
    if len(pipelines) > 1:
        raise ValueError(
            f"rows hold pipelines {sorted(pipelines)}: fit one at a time (filter rows by 'pipeline')"
        )
    return Rows(*(np.asarray(cols[k], float) for k in _COLUMNS))


load_rows = read_rows  # a results.jsonl's rows (a torn last line is skipped)
