"""The export method of `convert` and the model to save: choose QAT, PTQ or dequantize for a
source, apply it, and measure the validation losses the parity check compares against.

* QAT: pack exactly the trained grid (`pack.quantize_model` of the checkpoint's QATConfig);
  the losses before export are the fake-quant model's ("ref"), its float weights' ("fp") and
  round-to-nearest PTQ at the same format ("ptq").
* PTQ: the float weights, `prepare`d at the requested format (or the trained one) with min/max
  fake quant on, then packed: "fp" is the float model, "ref" = "ptq" the fake-quant model.
* dequantize: a float model ("ref" the model as loaded, "fp" its float weights).
"""

from __future__ import annotations

from pathlib import Path

import mlx.nn as nn

from ..eval_modes import eval_mode
from ..model_source import ModelSource
from ..prepare import prepare, qat_layers
from . import pack
from .errors import ConvertError
from .parity import ParityData, load_parity_data, val_loss
from .source import run_eval_setup

PARITY_TOKENS = 8192  # default cap on the parity check's target tokens


def default_batches(setup) -> int:
    # The run's eval batches, capped: MLX's CPU quantized kernels run at ~1 GFLOP/s (far less
    # in half precision), and a wrong grid shows on the first few thousand tokens already.
    per_batch = max(setup.batch_size * setup.seq_len, 1)
    cap = max(1, PARITY_TOKENS // per_batch)
    return min(setup.eval_batches or cap, cap)


def parity_data_for(source: ModelSource, parity_data, parity_batches, tok_dir) -> ParityData | str:
    """Validation batches for the check, or the reason there are none."""
    setup = run_eval_setup(source)
    if parity_data is not None:
        path = Path(parity_data)
        if not path.exists():
            raise ConvertError(f"--parity-data {path}: no such file or directory")
    elif setup.data_dir is not None:
        path = setup.data_dir
    else:
        return (
            f"no validation data for {source.path} ({setup.missing}); pass --parity-data "
            "(a prepared data dir, a .npy of token ids or text files)"
        )
    return load_parity_data(
        path,
        seq_len=setup.seq_len,
        batch_size=setup.batch_size,
        max_batches=parity_batches or default_batches(setup),
        vocab_size=source.vocab_size or (1 << 31),
        tokenizer_dir=tok_dir,
    )


def losses_before_export(
    model: nn.Module, data: ParityData | None, *modes: str, ref: str = "the model before export"
) -> dict[str, float | None]:
    """Validation loss of the model before export: as it is ("ref") and in eval `modes`.

    Modes are `mlx_qat.eval`'s: "fp" (fake quant off), "ptq" (min/max at each layer's format).
    """
    out: dict[str, float | None] = {"ref": None, **dict.fromkeys(modes)}
    if data is None:
        return out
    out["ref"] = val_loss(model, data.batches, ref)
    if any(True for _ in qat_layers(model)):
        names = {"fp": "its float weights (fake quant off)", "ptq": "round-to-nearest PTQ"}
        for mode in modes:
            with eval_mode(model, mode):
                out[mode] = val_loss(model, data.batches, names.get(mode, mode))
    return out


def prepare_export(source: ModelSource, model, method: str, requested, data):
    """Turn the loaded model into the one to save; return (quantization block, config, losses).

    `losses` (None without parity data): "ref" (the model as exported, before packing), "fp"
    (float weights) and "ptq" (round-to-nearest at the same format).
    """
    qcfg = source.qat_config if source.kind == "checkpoint" else None
    if method == "dequantize":
        if requested is not None:
            raise ConvertError("--dequantize writes a float model; drop --bits/--group-size/--mode")
        losses = losses_before_export(model, data, "fp")
        if source.kind == "checkpoint":
            pack.to_float(model, dequantized=True)
        elif source.quantized:
            pack.dequantize_stock(model)
        return None, None, losses
    if method == "ptq":
        cfg = pack.ptq_config(qcfg, requested)
        pack.to_float(model, dequantized=False)  # PTQ starts from the float weights
        fp = losses_before_export(model, data, ref="the float model")["ref"]
        prepare(model, cfg, enabled=True)
        losses = losses_before_export(model, data)
        losses.update(fp=fp, ptq=losses["ref"])
        return pack.quantize_model(model, cfg), cfg, losses
    pack.check_trained_format(qcfg, requested, source.path)
    losses = losses_before_export(model, data, "fp", "ptq")
    return pack.quantize_model(model, qcfg), qcfg, losses


def choose_method(source: ModelSource, ptq: bool, dequantize: bool) -> str:
    if ptq and dequantize:
        raise ConvertError("choose either --ptq or --dequantize, not both")
    if dequantize:
        return "dequantize"
    if source.kind == "mlx":
        if source.quantized:
            raise ConvertError(
                f"{source.path} is already quantized ({source.config.get('quantization')}); "
                "pass --dequantize for float weights (e.g. to start QAT from), or convert the "
                "float original"
            )
        return "ptq"
    if ptq:
        return "ptq"
    if not source.trained_with_qat:
        why = (
            "was never prepared for QAT (no qat_config)"
            if source.qat_config is None
            else f"was saved with fake quantization off (phase {source.qat.get('phase')!r})"
        )
        raise ConvertError(
            f"checkpoint {source.path} {why}: its weights were not trained for a quantized "
            "format. Pass --ptq for round-to-nearest post-training quantization (or "
            "--dequantize for a float model), or train with a QAT phase and convert that"
        )
    return "qat"
