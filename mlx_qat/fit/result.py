"""`FitResult`: a fitted law and its report, saved and loaded as JSON.

The JSON object holds `schema` ("mlx_qat.fit/1"), `params` (`LawParams.to_dict`) and the
report fields; non-finite floats are written as null. `save` writes atomically.
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
    """A fitted law and how well it fits (`fitting.fit` fills every field).

    n_rows: counts fit, fp, qat, from_scratch, ptq, fp_repeats. holdout: the
    leave-largest-size-out check (`fitting._holdout`; None with fewer than 2 sizes). a and the
    MAE against the optima of f̂ (fitted a; paper a), of the law's argmin and of f = 0.1: per
    optimum kind {"argmin", "vertex"}; None without optima. optima: `Optimum.to_dict()` plus
    "f_law" and "f_hat" (vertex-fitted a). bootstrap: {"n", "seed", "level", "n_failed",
    "params": {name: [lo, hi]}, "a": {kind: [lo, hi]}, "n_failed_a"}. n_range: [min, max] N
    fitted (None in older fits). degenerate: `fitting.constants_at_bounds`.
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
