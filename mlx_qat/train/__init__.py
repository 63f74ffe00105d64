"""Training: FP phase → switch → QAT phase, with checkpoints, evals and exact resume.

    >>> from mlx_qat.train import TrainConfig, train
    >>> result = train(TrainConfig(out="runs/tiny", preset="d2", tokens=300_000, bits=4))

Modules: `config` (TrainConfig, from the groups in `config_groups` and `config_recipe`),
`phase_plan` (the phase plan of a config), `schedules` (LR), `optim`, `step` (the compiled
step), `transitions` (how many codes each QAT step changes), `trs` (transition-rate scheduling,
`lr_control: trs`), `basin` (the QAT phase's basin monitor, `basin_monitor`), `metrics`,
`trainer` (the loop), `twin` (the FP twin and the comparison table), `api` (`train`: the whole
job; as `convert.api` holds `convert`), `plot`.
Command line: `mlx_qat.train`, and `mlx_qat.plan` to print the phase plan without training.
"""

from .api import train
from .config import TrainConfig, load_config
from .phase_plan import PhasePlan, auto_fraction, make_plan, plan_for_config, plan_for_model
from .schedules import lr_at
from .trainer import Trainer, TrainingDiverged

__all__ = [
    "PhasePlan",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "auto_fraction",
    "load_config",
    "lr_at",
    "make_plan",
    "plan_for_config",
    "plan_for_model",
    "train",
]
