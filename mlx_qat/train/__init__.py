"""Training: FP phase → switch → QAT phase, with checkpoints, evals and exact resume.

    >>> from mlx_qat.train import TrainConfig, train
    >>> result = train(TrainConfig(out="runs/tiny", preset="d2", tokens=300_000, bits=4))

Command line: `mlx_qat.train --config configs/main.yaml` (see `--help`), and `mlx_qat.plan`
to print the phase plan without training.
"""

from .checkpoint import (
    Checkpoint,
    CheckpointError,
    build_model,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from .config import TrainConfig, load_config, parse_args
from .plan import PhasePlan, auto_fraction, make_plan
from .schedules import lr_at
from .trainer import Trainer, TrainingDiverged, train

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "PhasePlan",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "auto_fraction",
    "build_model",
    "latest_checkpoint",
    "load_checkpoint",
    "load_config",
    "lr_at",
    "make_plan",
    "parse_args",
    "save_checkpoint",
    "train",
]
