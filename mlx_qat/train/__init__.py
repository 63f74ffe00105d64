"""Training: FP phase → switch → QAT phase, with checkpoints, evals and exact resume.

    >>> from mlx_qat.train import TrainConfig, train
    >>> result = train(TrainConfig(out="runs/tiny", preset="d2", tokens=300_000, bits=4))

Modules: `config` (TrainConfig, from the groups in `config_groups` and `config_recipe`),
`phase_plan`, `schedules` (LR), `optim`, `step` (the compiled step), `transitions` and `trs`
(code changes per QAT step; transition-rate scheduling), `basin` (the basin monitor),
`metrics`, `trainer` (the loop), `twin` (`train`: the whole job, with the FP twin), `plot`.
Command line: `mlx_qat.train`, and `mlx_qat.plan` to print the phase plan without training.
"""

from .config import TrainConfig, load_config
from .phase_plan import PhasePlan, auto_fraction, make_plan, plan_for_config, plan_for_model
from .schedules import lr_at
from .trainer import Trainer, TrainingDiverged
from .twin import train

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
