"""`train(config)`: the whole training job — the run, its FP twin, the loss plot."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from ..fileio import atomic_write_json
from ..model_source import resolve_model
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

    Example:
        >>> result = train(TrainConfig(out="runs/tiny", preset="d2", tokens=300_000))
        >>> result["eval"]["qat"]["bpb"]
    """
    if config.model:
        config = local_model(config)
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


def local_model(config: TrainConfig) -> TrainConfig:
    """`config` with its `--model` resolved once (`model_source.resolve_model`): a Hugging Face
    repo id becomes its local snapshot folder (the local cache first, at `revision`), which
    config.yaml then records; a local folder is kept as given.

    Raises:
        ValueError: a `--model` that is no mlx-lm folder or repo id, or a hub id offline and
            not in the cache (the message says how to fetch it).
    """
    source = resolve_model(config.model, config.revision, "--model")
    if source.kind != "mlx":
        raise ValueError(
            f"--model {config.model}: a {source.kind}, not an mlx-lm model; give a float mlx-lm "
            "model directory or a Hugging Face repo id"
        )
    if source.hub is None:
        return config
    logger.info("--model %s: %s", source.hub, source.path)
    return replace(config, model=str(source.path))
