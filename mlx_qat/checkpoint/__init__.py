"""Training checkpoints: one directory per step, written atomically, loaded strictly.

Layout (the export in `mlx_qat.convert` reads exactly this)::

    run_dir/config.yaml                 resolved TrainConfig
    run_dir/metrics.jsonl               one JSON object per line
    run_dir/tokenizer/                  the data's tokenizer (sentencepiece + HF files)
    run_dir/checkpoints/step_XXXXXXXX/  8-digit step = optimizer steps completed
        model.safetensors               dict(tree_flatten(model.parameters())) of the PREPARED
                                        model (float weights + quantizer parameters)
        optimizer.safetensors           flattened optimizer state
        config.json                     mlx-lm model config ({"model_type", <ModelArgs>})
        qat.json                        {"qat_config": QATConfig.to_dict(), "fake_quant",
                                         "phase": "fp" | "qat"}
        state.json                      {"step", "tokens_seen", "phase", "data", "rng",
                                         "config_hash", "tokenizer_sha256", "eval",
                                         "format", "files", ...}
        SHA256SUMS                      sha256 of every file above (`sha256sum -c` format)

Modules: `store` (save, list, prune, load), `integrity` (file names, checksums, the checks on
every read, `seal_checkpoint`); this one rebuilds the trained model (`build_model`).
"""

from __future__ import annotations

import os

import mlx.core as mx
import mlx.nn as nn

from .integrity import (
    CHECKSUMS,
    FORMAT,
    MODEL_FILE,
    OPTIMIZER_FILE,
    RECORDED,
    STATE_FILE,
    CheckpointError,
    seal_checkpoint,
)
from .store import (
    CHECKPOINTS,
    STEP_DIR,
    Checkpoint,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    remove_stale_tmp,
    save_checkpoint,
    step_dir_name,
)

__all__ = [
    "CHECKPOINTS",
    "CHECKSUMS",
    "FORMAT",
    "MODEL_FILE",
    "OPTIMIZER_FILE",
    "RECORDED",
    "STATE_FILE",
    "STEP_DIR",
    "Checkpoint",
    "CheckpointError",
    "build_model",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "qat_config_of",
    "remove_stale_tmp",
    "save_checkpoint",
    "seal_checkpoint",
    "step_dir_name",
]


def qat_config_of(ckpt: Checkpoint):
    """The checkpoint's `QATConfig` (None when the model was never prepared)."""
    from ..qat_config import QATConfig

    d = ckpt.qat.get("qat_config")
    if not d:
        return None
    try:
        return QATConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {ckpt.path}: invalid qat_config in qat.json ({e})"
        ) from None


def build_model(ckpt_or_path: Checkpoint | str | os.PathLike) -> nn.Module:
    """Rebuild the trained model: mlx-lm arch from config.json, `prepare`, strict weights.

    Fake quant is set as qat.json records it. The model is in eval mode.

    Example:
        >>> model = build_model("runs/main")  # latest checkpoint
    """
    from ..models.presets import model_from_config
    from ..prepare import prepare, set_fake_quant

    ckpt = ckpt_or_path
    if not isinstance(ckpt, Checkpoint):
        ckpt = load_checkpoint(ckpt, optimizer=False)
    try:
        model = model_from_config(ckpt.model_config)
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(
            f"checkpoint {ckpt.path}: config.json cannot build a model ({e})"
        ) from None
    qcfg = qat_config_of(ckpt)
    fake = bool(ckpt.qat.get("fake_quant", False))
    if qcfg is not None:
        prepare(model, qcfg, enabled=fake)
    try:
        model.load_weights(list(ckpt.weights.items()), strict=True)
    except ValueError as e:
        raise CheckpointError(
            f"checkpoint {ckpt.path}: {MODEL_FILE} does not match config.json/qat.json ({e}); "
            "the checkpoint is corrupt or from another model"
        ) from None
    if qcfg is not None:
        set_fake_quant(model, fake)
    mx.eval(model.parameters())
    model.eval()
    return model
