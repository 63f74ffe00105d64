"""A sweep's grid: the YAML file, and its expansion into one `TrainConfig` per run.

    out: runs/sweep_tiny              # every run in <out>/runs/<name>/, rows in <out>/results.jsonl
    data: data/sweep                  # one prepared data set (mlx_qat.data) for every run
    train: {batch_size: 8, ...}       # TrainConfig settings shared by every run
    fp_anchor: true                   # add a pure-FP run (f = 0) per model, budget and seed
    fp_twins: false                   # true: every QAT run also trains its float twin
    grids:                            # each a product; keys left out come from `defaults`
      - name: main
        models: [d2, d4]              # presets, or {name: x, model_config: path/config.json}
        tokens: [2e5, 1e6]
        bits: [2, 4]
        fractions: [0.1, 0.3, auto]   # numbers in (0, 1], or auto = exp(-a / ln S)
        pipelines: [fused]
        seeds: [0]

A float twin (`train.twin`: the QAT phase again from the switch checkpoint, fake quant off)
puts `qat_penalty = L_QAT − L_FP(twin)` in the row; with `train: {cooldown_mode: fixed}` every
fused fraction has one LR schedule, so penalty and loss are told apart from the cooldown.
A relative `model_config` is looked up beside the sweep file first, then in the working
directory. Runs that differ only in grid are one run; a run's name spells its grid point, so a
changed grid keeps the runs (and rows) that still match.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from ..train.config import TrainConfig, normalize_fraction, parse_count

AXES = ("models", "tokens", "bits", "fractions", "pipelines", "seeds")
# What a grid point sets: the sweep owns these, so `train:` may not.
OWNED = {"out", "data", "preset", "model_config", "model", "tokens", "bits", "qat_fraction",
         "pipeline", "seed", "resume", "branch_from", "fp_twin", "plot", "quiet"}  # fmt: skip
DEFAULT_AXES = {"pipelines": ["fused"], "seeds": [0]}


@dataclass(frozen=True)
class Model:
    """A model of the grid: a preset name, or a name for an mlx-lm config.json."""

    name: str
    model_config: str | None = None

    @classmethod
    def parse(cls, value: Any, where: str, base: Path | None = None) -> Model:
        """A grid's `models:` entry; a relative model_config is looked up under `base` first."""
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, dict) and set(value) == {"name", "model_config"}:
            path = Path(str(value["model_config"]))
            if base is not None and not path.is_absolute() and (base / path).is_file():
                path = base / path
            return cls(str(value["name"]), str(path))
        raise ValueError(
            f"{where}: a model is a preset name (d2) or {{name: x, model_config: path}}; "
            f"got {value!r}"
        )


@dataclass(frozen=True)
class Point:
    """One run of the grid."""

    model: Model
    tokens: int
    bits: int
    fraction: float | str  # a number in [0, 1], or "auto"
    pipeline: str
    seed: int
    groups: tuple[str, ...] = field(default=(), compare=False)

    @property
    def name(self) -> str:
        f = self.fraction if self.fraction == "auto" else f"{float(self.fraction):.4g}"
        return f"{self.model.name}_D{self.tokens}_b{self.bits}_f{f}_{self.pipeline}_s{self.seed}"


@dataclass
class Sweep:
    """The parsed sweep file: where it writes, its data, the shared settings and the runs."""

    out: Path
    data: str
    train: dict
    points: list[Point]
    fp_anchor: bool = True
    source: str = "sweep"
    fp_twins: bool = False

    def config(self, point: Point) -> TrainConfig:
        """The TrainConfig of one grid point (output in `<out>/runs/<name>`)."""
        kw = dict(self.train)
        kw.setdefault("auto_scale", 1.0)  # a grid's `auto` is the predictor itself, at any bits
        kw.update(
            out=str(self.out / "runs" / point.name),
            data=[self.data],
            tokens=point.tokens,
            bits=point.bits,
            qat_fraction=point.fraction,
            pipeline=point.pipeline,
            seed=point.seed,
            quiet=True,
            fp_twin=self.fp_twins,  # the trainer skips it where a phase is empty (f = 0, 1)
        )
        if point.model.model_config:
            kw["model_config"] = point.model.model_config
        else:
            kw["preset"] = point.model.name
        return TrainConfig(**kw)


def _axis(grid: dict, defaults: dict, key: str, where: str) -> list:
    values = grid.get(key, defaults.get(key, DEFAULT_AXES.get(key)))
    if values is None:
        raise ValueError(f"{where}: no {key!r}; give a list (or set it under defaults:)")
    values = values if isinstance(values, list) else [values]
    if not values:
        raise ValueError(f"{where}: {key!r} is empty")
    return values


def _whole(value: Any, key: str, where: str) -> int:
    """An integer grid value (bits, seeds): 4, 4.0 or "4"; anything else names the key."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"{where}: {key}: {value!r} is not a whole number")


def _points(grid: dict, defaults: dict, where: str, base: Path | None = None) -> list[Point]:
    unknown = sorted(set(grid) - {*AXES, "name"})
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; a grid has {AXES}")
    axes = {k: _axis(grid, defaults, k, where) for k in AXES}
    models = [Model.parse(m, where, base) for m in axes["models"]]
    tokens = [parse_count(t, f"{where}: tokens") for t in axes["tokens"]]
    fractions = [normalize_fraction(f) for f in axes["fractions"]]
    bits = [_whole(b, "bits", where) for b in axes["bits"]]
    seeds = [_whole(s, "seeds", where) for s in axes["seeds"]]
    name = str(grid.get("name", where))
    return [
        Point(m, t, b, f, str(p), s, (name,))
        for m, t, b, f, p, s in itertools.product(
            models, tokens, bits, fractions, axes["pipelines"], seeds
        )
    ]


def load_sweep(path: str | Path) -> Sweep:
    """Parse a sweep YAML file; every problem is a ValueError naming the file and the key."""
    where = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"sweep file {where}: cannot read it ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"sweep file {where}: must hold a mapping (out, data, train, grids)")
    known = {"out", "data", "train", "defaults", "grids", "fp_anchor", "fp_twins"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"sweep file {where}: unknown key(s) {', '.join(unknown)}; known: {known}")
    for key in ("out", "data", "grids"):
        if not raw.get(key):
            raise ValueError(f"sweep file {where}: {key!r} is required")
    train = {str(k).replace("-", "_"): v for k, v in (raw.get("train") or {}).items()}
    owned = sorted(set(train) & OWNED)
    if owned:
        raise ValueError(
            f"sweep file {where}: train: sets {', '.join(owned)}, which the grid decides; "
            "move them into grids: (models, tokens, bits, fractions, pipelines, seeds)"
        )
    TrainConfig.from_dict(train, where=f"{where}: train")  # unknown keys / bad values, now
    defaults = raw.get("defaults") or {}
    seen: dict[Point, Point] = {}
    grid_of: dict[Point, str] = {}  # where each run was first given, for the errors below
    for i, grid in enumerate(raw["grids"]):
        if not isinstance(grid, dict):
            raise ValueError(f"sweep file {where}: grids[{i}] must be a mapping")
        for p in _points(grid, defaults, f"{where}: grids[{i}]", Path(path).parent):
            q = seen.get(p)  # the same run in two grids: once, in both groups
            seen[p] = p if q is None else replace(q, groups=q.groups + p.groups)
            grid_of.setdefault(p, f"{where}: grids[{i}]")
    if not isinstance(raw.get("fp_twins", False), bool):
        raise ValueError(f"sweep file {where}: fp_twins: {raw['fp_twins']!r} is not true or false")
    sweep = Sweep(
        out=Path(raw["out"]),
        data=str(raw["data"]),
        train=train,
        points=list(seen.values()),
        fp_anchor=bool(raw.get("fp_anchor", True)),
        source=where,
        fp_twins=raw.get("fp_twins", False),
    )
    for p in sweep.points:  # a bad grid value (bits 7, pipeline x) is named with its grid
        try:
            sweep.config(p)
        except ValueError as e:
            raise ValueError(f"{grid_of[p]}: run {p.name}: {e}") from None
    return sweep
