"""What `convert` reads: a training run, one of its checkpoints, an mlx-lm model directory or a
Hugging Face repo id, resolved by the package's one resolver (`mlx_qat.model_source`).

Checkpoints are read and rebuilt by the trainer's own `mlx_qat.checkpoint`
(`load_checkpoint`, `build_model`), so `convert` sees exactly the model the trainer saved.
Every failure is a `ConvertError` that names the path and says what to do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import mlx.nn as nn

from ..checkpoint import build_model
from ..model_source import ModelSource, load_float, resolve_model
from .errors import ConvertError

logger = logging.getLogger(__name__)


def resolve_source(
    path: str | Path, revision: str | None = None, check_qat: bool = True
) -> ModelSource:
    """Find out what `path` is and read it (a checkpoint's weights are loaded here).

    `check_qat`: validate a checkpoint's qat_config now; PTQ of its float weights does not
    read it (a model the trainer can no longer describe still has weights to round).
    """
    try:
        source = resolve_model(path, revision)
        if source.kind == "gguf":
            raise ConvertError(f"{path}: a GGUF file is imported (mlx_qat.convert FILE.gguf)")
        source.config  # noqa: B018  (read now: a corrupt checkpoint is reported here)
        if check_qat:
            source.qat_config  # noqa: B018
    except ValueError as e:  # SourceError, CheckpointError
        raise ConvertError(str(e)) from None
    return source


def load_checkpoint_model(source: ModelSource) -> nn.Module:
    """The model as the trainer saved it: prepared (QAT layers), weights loaded, fake quant set."""
    try:
        model = build_model(source.checkpoint)
    except ValueError as e:
        raise ConvertError(str(e)) from None
    source.checkpoint.weights = {}  # the model holds them now
    return model


def load_mlx_model(source: ModelSource) -> nn.Module:
    """An mlx-lm directory's model, through mlx-lm's own loader (quantized layers included)."""
    try:
        return load_float(source, allow_quantized=True)[0]
    except ValueError as e:
        raise ConvertError(str(e)) from e


@dataclass
class EvalSetup:
    """Where the run's validation data is and how the trainer batched it.

    `data_dir` is prepared data (`mlx_qat.data` output); None with `missing` saying why.
    """

    data_dir: Path | None
    seq_len: int = 128
    batch_size: int = 8
    eval_batches: int | None = 8
    missing: str | None = None


def run_eval_setup(source: ModelSource) -> EvalSetup:
    """The trainer's validation settings: its shards (state.json) and config.yaml batching."""
    from ..data.resolve import is_prepared
    from ..train.config import load_config

    run_dir = source.run_dir
    if run_dir is None or not (run_dir / "config.yaml").is_file():
        return EvalSetup(None, missing="no run config.yaml")
    try:
        cfg = load_config(run_dir / "config.yaml")
    except (OSError, ValueError, TypeError) as e:
        raise ConvertError(f"{run_dir / 'config.yaml'}: cannot read the run config ({e})") from e
    out = EvalSetup(None, cfg.seq_len, cfg.batch_size, cfg.eval_batches)
    # The shards the trainer used (absolute path in state.json), else its --data when that
    # was a prepared directory (relative to where training ran, or beside the run).
    shards = (source.state.get("data") or {}).get("shards")
    candidates = [Path(shards)] if shards else []
    if isinstance(cfg.data, list) and len(cfg.data) == 1:
        d = Path(str(cfg.data[0])).expanduser()
        candidates += [d, run_dir.parent / d, run_dir / d]
    for c in candidates:
        if is_prepared(c):
            out.data_dir = c
            return out
    out.missing = f"the run's data ({cfg.data or 'default corpus'}) is not prepared data here"
    return out
