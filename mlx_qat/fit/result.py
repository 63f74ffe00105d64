"""`FitResult`: a fitted law and its report, saved and loaded as JSON.

The JSON object holds `schema` ("mlx_qat.fit/1"), `params` (`LawParams.to_dict`) and the
report fields below; non-finite floats are written as null. `save` writes atomically.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..fileio import atomic_write_text
from .law import LawParams

SCHEMA = "mlx_qat.fit/1"


@dataclass
class FitResult:
    """A fitted law and how well it fits.

    Attributes:
        params: the law's constants.
        huber_delta, fp_weight: fit settings.
        n_rows: counts: fit (FP + QAT used), fp, qat, from_scratch, ptq (the last two unused),
            fp_repeats (FP rows dropped as a repeat of an FP run already counted).
        r2_log, rmse_log: R² and RMSE of log L on the fitted rows; `*_qat` on QAT rows only.
        holdout: leave-largest-size-out: {"N", "n_rows", "mean_abs_rel_err",
            "max_abs_rel_err", "rmse_log"} of the refit's prediction of the held-out size's QAT
            final losses; "copy": the nearest-size copy's errors and the law's on the same runs
            (`baselines.copy_check`); "fraction": MAE of the refit's argmin, of f̂ with `a`
            from the other sizes and of a constant f = 0.1 against the held-out size's optima
            (`baselines.fraction_check`, plus that "a"); "law_beats" and "verdict" (one plain
            sentence per comparison, `baselines.verdict`); None with fewer than 2 sizes (or
            too few rows without the largest).
        a: fitted `a` of f̂ per optimum kind {"argmin", "vertex"}; None without optima.
        mae_f_hat: MAE of f̂ (fitted a) against the optima, per kind.
        mae_f_hat_paper: MAE of f̂ with the paper's a = 6.7297, per kind.
        mae_law: MAE of the law's own argmin against the optima, per kind.
        mae_const_f: MAE of a constant f = 0.1 (the trivial baseline) against the optima.
        optima: per (N, D, bits) group: `Optimum.to_dict()` plus "f_law" (the law's argmin)
            and "f_hat" (f̂ with the vertex-fitted a).
        bootstrap: {"n", "seed", "level", "n_failed", "params": {name: [lo, hi]},
            "a": {kind: [lo, hi]}, "n_failed_a"}; each resample of the rows refits the law
            from the fixed start grid and `a` from its own optima; None when n_bootstrap = 0.
        n_range: [smallest, largest] N of the fitted rows (None in fits saved before it was
            recorded): the sizes the law may be asked about.
        degenerate: the constants at a bound of the fitter's box ([{"name", "value",
            "bound"}], `fitting.constants_at_bounds`): empty for a fit the rows determine.
    """

    params: LawParams
    huber_delta: float = 1e-3
    fp_weight: float = 1.0
    n_rows: dict = field(default_factory=dict)
    r2_log: float = math.nan
    rmse_log: float = math.nan
    r2_log_qat: float = math.nan
    rmse_log_qat: float = math.nan
    holdout: dict | None = None
    a: dict | None = None
    mae_f_hat: dict | None = None
    mae_f_hat_paper: dict | None = None
    mae_law: dict | None = None
    mae_const_f: dict | None = None
    optima: list = field(default_factory=list)
    bootstrap: dict | None = None
    n_range: list | None = None
    degenerate: list = field(default_factory=list)

    def to_dict(self) -> dict:
        d = {"schema": SCHEMA, **asdict(self)}
        d["params"] = self.params.to_dict()
        return json_safe(d)

    @classmethod
    def from_dict(cls, d: dict) -> FitResult:
        if d.get("schema") != SCHEMA:
            raise ValueError(f"FitResult: schema {d.get('schema')!r}, expected {SCHEMA!r}")
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names - {"schema"}
        if unknown:
            raise ValueError(f"FitResult: unknown keys {sorted(unknown)}")
        kw = {k: v for k, v in d.items() if k in names}
        kw["params"] = LawParams.from_dict(d["params"])
        for k in ("r2_log", "rmse_log", "r2_log_qat", "rmse_log_qat"):
            kw[k] = math.nan if kw.get(k) is None else float(kw[k])
        return cls(**kw)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> FitResult:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        """Write `to_json()` to `path` atomically."""
        atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> FitResult:
        return cls.from_json(Path(path).read_text())


def json_safe(x):
    """Deep copy with non-finite floats as None (JSON has no NaN) and tuples as lists."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
