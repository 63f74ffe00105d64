"""`TrainConfig`: every setting of a training run, as plain data, in groups.

The groups (`GROUPS`, in `--help` order) are dataclasses that own their fields' defaults, help
and checks (`config_groups.py`, `config_recipe.py`). `TrainConfig` inherits them all, so a
setting is one flat attribute (`cfg.lr`), one flat YAML key and one `--kebab-case` flag (`q_mode`
is `--mode`: `FLAG_NAMES`). Validation runs each group's `check`, then the rules across groups.
The trainer writes the resolved config to `<out>/config.yaml`; `load_config` reads it back.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

from . import config_groups as cg
from . import config_recipe as cr
from .config_groups import default_of, need, normalize_fraction, parse_count  # noqa: F401
from .config_recipe import GRANULARITIES, OBJECTIVES  # noqa: F401
from .defaults import fill_defaults, scratch_default

GROUPS = (cg.ModelSettings, cg.DataSettings, cg.RunSettings, cr.ScheduleSettings,
          cr.OptimizerSettings, cr.QuantSettings, cr.DistillSettings, cr.TRSSettings,
          cg.LoggingSettings, cg.ExecutionSettings)  # fmt: skip
# Fields that do not change what is trained: excluded from the config hash. basin_monitor and
# report_to observe only (training is bit-identical with them: tests/test_basin.py).
_NOT_HASHED = set(
    "out resume branch_from overwrite reschedule data_out quiet eval_every eval_batches "
    "final_eval_batches save_every save_steps keep_checkpoints log_every plot fp_twin compile "
    "cache_limit_mb dist_timeout basin_monitor report_to project_name".split()
)
# Fields added after runs existed: left out of the hash while at their default, so that those
# runs keep their hash (resume, sweep rows). A default never changes meaning, so this is exact.
_HASHED_WHEN_SET = tuple(
    "objective kd_temperature kd_weight teacher_dtype quant_overrides lr_control trs_lambda "
    "trs_momentum trs_granularity trs_u0 trs_eta scale_grad train master_dtype weight_lr_scale "
    "mask_prompt revision cooldown_mode grid_first_fraction auto_scale".split()
)
# ... compared with the value in effect before the field existed where the default now depends
# on the run (auto_scale: 2 at 2 bits from scratch, but every earlier run took 1x the auto f).
# A run's own config.yaml without the field is read with that value too (`load_config`).
_BEFORE = {"auto_scale": 1.0}
CONFIG_HEADER = "# mlx_qat.train resolved config"
# Settings a resumed run may change with `reschedule` (e.g. after a divergence): they shape the
# LR and the update from the resumed step on, not the plan, the model or the data.
SCHEDULE_FIELDS = ("lr", "min_lr", "warmup_tokens", "warmup_steps", "qat_warmup_fraction",
                   "grad_clip")  # fmt: skip
# Fields whose flag is spelt otherwise (one flag name per concept across the verbs): field ->
# flag name. The field keeps its name (config.yaml, the hash of existing runs); `from_dict`
# reads the flag's name as a key too, and the CLI keeps the old flag for one release.
FLAG_NAMES = {"q_mode": "mode"}
# Left out of the hash a resume compares: the data is checked by content instead (the shards'
# key and the tokenizer's sha256 in every checkpoint), so however its path is spelt (`data/`,
# `./data`, absolute, a copied run's) the same data resumes and other data is refused.
DATA_FIELDS = ("data",)


# Bases in reverse: a dataclass lists its bases' fields from the last base to the first, so
# the fields (config.yaml's keys) come in `GROUPS` order.
@dataclass
class TrainConfig(*reversed(GROUPS)):
    """One training run. See `mlx_qat.train --help` for every field; `GROUPS` for the groups.

    Example:
        >>> cfg = TrainConfig(preset="d2", tokens=200_000, bits=4, qat_fraction="auto")
        >>> result = mlx_qat.train.train(cfg)
    """

    KEY = TITLE = None  # (the groups' section names; the whole config has none)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Fill the run-dependent defaults (`defaults.py`), run each group's check, then the
        rules across groups; raise ValueError naming the field, the problem and the fix."""
        fill_defaults(self)  # from scratch or fine-tune (--model): what the user left out
        for group in GROUPS:
            group.check(self)
        need(
            self,
            self.train == "all" or self.lr_control == "schedule",
            "train",
            "'all' with --lr-control trs (TRS steers the weights, which --train grid freezes)",
        )
        need(
            self,
            not self.grid_first_fraction or self.lr_control == "schedule",
            "grid_first_fraction",
            "0 with --lr-control trs (TRS steers the weights from the switch on, which the "
            "grid-first steps freeze)",
        )

    check = validate  # not one group's check: the whole config's

    to_dict = asdict  # plain data, YAML-able: flat, one key per field

    def group(self, cls: type) -> object:
        """This config's settings of one group (a `cls` in `GROUPS`) as that group's object."""
        return cls(**{f.name: getattr(self, f.name) for f in fields(cls)})

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> TrainConfig:
        """Build from a (possibly kebab-case) mapping whose keys are fields or their flags'
        names (`mode` for q_mode); unknown keys, or a field given twice, raise ValueError."""
        d = {str(k).replace("-", "_"): v for k, v in d.items()}
        for name, flag in FLAG_NAMES.items():
            if flag in d:
                if name in d:
                    raise ValueError(f"{where}: {name} and {flag} are the same setting; keep one")
                d[name] = d.pop(flag)
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(
                f"{where}: unknown setting(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(names))}"
            )
        return cls(**d)

    def to_yaml(self) -> str:
        """The resolved config as YAML (the run directory's `config.yaml`)."""
        return CONFIG_HEADER + "\n" + yaml.safe_dump(self.to_dict(), sort_keys=False)

    def hash(self, exclude: tuple[str, ...] = ()) -> str:
        """sha256 of the settings that change what is trained (for resume checks), without
        the fields in `exclude`."""
        d = {k: v for k, v in self.to_dict().items() if k not in _NOT_HASHED | set(exclude)}
        defaults = TrainConfig.__dataclass_fields__
        for k in _HASHED_WHEN_SET:
            before = _BEFORE.get(k, scratch_default(k, default_of(defaults[k])))
            if k in d and d[k] == before:
                del d[k]
        if "quant_overrides" in d:  # their order matters (the first matching glob wins)
            d["quant_overrides"] = [[k, v] for k, v in d["quant_overrides"].items()]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def schedule(self) -> dict:
        """The `SCHEDULE_FIELDS` values (what `reschedule` lets a resume change)."""
        return {k: getattr(self, k) for k in SCHEDULE_FIELDS}


def load_config(path: str | Path) -> TrainConfig:
    """Read a `config.yaml` (a run's resolved config, or a hand-written one)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        raw = yaml.safe_load(text) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"config file {path}: cannot read it ({e})") from e
    if not isinstance(raw, dict):
        raise ValueError(f"config file {path}: must hold a mapping of setting: value")
    if text.startswith(CONFIG_HEADER):  # a run's own: what it was trained with
        raw = {**_BEFORE, **raw}
    return TrainConfig.from_dict(raw, where=str(path))
