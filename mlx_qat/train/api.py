"""`train(config)`: the whole training job — the run, its FP twin, the loss plot."""

from __future__ import annotations

import logging
from pathlib import Path

from ..fileio import atomic_write_json
from .config import TrainConfig
from .trainer import RESULT, Trainer
from .twin import comparison, run_fp_twin

logger = logging.getLogger(__name__)


def train(config: TrainConfig, on_step=None, callbacks=()) -> dict:
    """Train per `config`; returns the result (plan, final eval, throughput).

    With `config.fp_twin`, also trains the FP twin from the switch checkpoint (the QAT phase
    with fake quant off) and adds `result["twin"]` and `result["comparison"]`; a fine-tune
    (`config.model`) has `result["pretrained"]` (its teacher and the teacher's RTN) and a
    `result["comparison"]` against them; with
    `config.plot`, draws `<out>/loss.png` (`result["plot"]`; needs matplotlib). Started by
    `mlx.launch` on several processes, trains data-parallel (`mlx_qat.train.dist`): every
    process returns the same result, rank 0 alone writes.
    `callbacks` (`callbacks.TrainingCallback`) plug into the run (not into its FP twin).
    A `--model` repo id is resolved by the trainer (`model_source.float_model_dir`):
    config.yaml keeps the id, and a resume resolves it again.

    Example:
        >>> result = train(TrainConfig(out="runs/tiny", preset="d2", tokens=300_000))
        >>> result["eval"]["qat"]["bpb"]
    """
    trainer = Trainer(config, on_step, callbacks)
    trainer.setup()
    result = trainer.run()
    main = trainer.dist.is_main  # with several processes (mlx.launch) rank 0 alone writes
    if config.fp_twin:
        result = run_fp_twin(config, trainer, result)
    elif result.get("pretrained"):  # a fine-tune: its teacher / RTN / QAT headline
        result = {**result, "comparison": comparison(result, None)}
    if main and (config.fp_twin or result.get("pretrained")):
        atomic_write_json(Path(config.out) / RESULT, result)
    if config.plot and main:
        from .plot import plot_run

        try:
            result["plot"] = str(plot_run(config.out))
        except ImportError as e:
            logger.warning("plot: %s", e)
    return result
