"""`convert`: a training checkpoint (or an mlx-lm model) → an MLX model directory.

What is read: a training run, one of its checkpoints, an mlx-lm model directory or a Hugging
Face repo id, resolved by the package's one resolver (`mlx_qat.model_source`); checkpoints are
rebuilt by the trainer's own `mlx_qat.checkpoint.build_model`, so `convert` sees exactly the
model the trainer saved. Three methods, one tool, so FP, PTQ and QAT numbers come from the same
code; the losses each measures before export, for the parity check and the model card:

* QAT (default for a checkpoint trained with fake quantization): pack exactly the trained grid
  (`pack.quantize_model` of the checkpoint's QATConfig). "ref" is the fake-quant model, "fp"
  its float weights, "ptq" round-to-nearest at the same format.
* PTQ (`ptq=True`, or any float mlx-lm model): the float weights, `prepare`d at the requested
  format (or the trained one, else affine 4/64) with min/max fake quant on, then packed: "fp"
  is the float model, "ref" = "ptq" the fake-quant model.
* dequantize (`dequantize=True`): a float model; the fake-quant weights of a checkpoint, or the
  float weights of a quantized mlx-lm model (a starting point for QAT fine-tuning). "ref" is
  the model as loaded, "fp" its float weights.

Nothing non-finite is exported (`errors`). Each export is checked: the validation loss of the
model before export and of the staged directory loaded back by mlx-lm must agree (`parity`);
only then is `config.json` written and the directory renamed into place (`write`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from ..checkpoint import build_model
from ..eval_modes import eval_mode
from ..model_source import ModelSource, load_float, resolve_model
from ..prepare import prepare, qat_layers
from . import pack
from .card import model_card
from .errors import ConvertError, ParityError, check_loss, check_model, check_source_finite
from .parity import (
    ParityData,
    check_parity,
    default_tolerance,
    load_parity_data,
    parity_message,
    val_loss,
)
from .tokenizer import REMOTE_CODE_KEYS, check_recorded, save_tokenizer
from .write import (
    check_output,
    commit_config,
    save_config,
    save_weights,
    staged_dir,
    write_result,
)

logger = logging.getLogger(__name__)

PARITY_TOKENS = 8192  # default cap on the parity check's target tokens


@dataclass
class ConvertResult:
    """What `convert` wrote and measured (also saved as `mlx_qat.json` in the output)."""

    mlx_path: str
    source: str
    source_kind: str
    step: int | None
    method: str
    quantization: dict | None
    dtype: str
    bits_per_weight: float
    num_parameters: int
    total_bytes: int
    files: dict[str, int]
    layers: dict[str, int]
    parity: dict | None = None
    parity_skipped: str | None = None
    options: dict = field(default_factory=dict)
    seconds: float = 0.0

    to_dict = asdict  # plain data (dataclasses.asdict)


def convert(
    qat_path: str | Path,
    mlx_path: str | Path = "mlx_model",
    *,
    q_bits: int | None = None,
    q_group_size: int | None = None,
    q_mode: str | None = None,
    dtype: str | None = None,
    ptq: bool = False,
    dequantize: bool = False,
    force: bool = False,
    parity_check: bool = True,
    parity_tolerance: float | None = None,
    parity_data: str | Path | None = None,
    parity_batches: int | None = None,
    tokenizer: str | Path | None = None,
    revision: str | None = None,
) -> ConvertResult:
    """Export a training run, checkpoint or mlx-lm model as an MLX model directory.

    Args:
        qat_path: a run directory (its latest checkpoint), a checkpoint directory, or an
            mlx-lm model directory or Hugging Face repo id (float: PTQ or re-save;
            quantized: needs `dequantize`).
        mlx_path: output directory (built as `<mlx_path>.tmp-<pid>`, renamed when complete).
        q_bits, q_group_size, q_mode: target format. For a QAT checkpoint they must match the
            trained format; for PTQ they choose it (default: the trained one, else affine 4/64).
        dtype: "float16", "bfloat16" or "float32" for float parameters and affine
            scales/biases (default: the run's `scale_dtype` if set, else the dtype of the
            trained weights; see `mlx_qat.convert.pack`).
        ptq: round-to-nearest (min/max) quantization of the float weights instead of QAT.
        dequantize: write a float model.
        force: replace an existing `mlx_path`.
        parity_check: compare validation losses before/after export (ParityError on failure).
        parity_tolerance: allowed relative loss difference (default by dtype, 1e-4 for float32).
        parity_data: validation data (prepared data dir, .npy token ids, or text files);
            default: the run's own data from its config.yaml.
        parity_batches: number of validation batches (default: the run's eval batches, at
            most `PARITY_TOKENS` target tokens).
        tokenizer: tokenizer directory to ship (default: the run's tokenizer/, or the mlx-lm
            model's own).
        revision: the hub revision (branch, tag or commit) when `qat_path` is a repo id.

    Returns:
        A `ConvertResult`; raises `ConvertError` on bad input and `ParityError` when the
        exported model's loss differs from the fake-quant model's by more than the tolerance.

    Example:
        >>> convert("runs/main", "mlx_model_2bit")  # latest checkpoint, trained grid
    """
    t0 = time.perf_counter()
    options = {k: str(v) if isinstance(v, Path) else v for k, v in locals().items() if k != "t0"}
    mlx_path = Path(mlx_path).expanduser()
    out_dtype = pack.parse_dtype(dtype)
    given = {"--tokenizer": tokenizer, "--parity-data": parity_data}
    # Before loading anything; what --force may replace once the inputs are known.
    check_output(mlx_path, force, given, {"the input": qat_path}, judge_force=False)
    source = resolve_source(qat_path, revision, check_qat=not ptq)
    if tokenizer is not None:
        tok_dir = Path(tokenizer)
    else:
        tok_dir = source.tokenizer_dir if source.kind == "checkpoint" else source.path
    inputs = {"the input": source.path, "the tokenizer": tok_dir}
    check_output(mlx_path, force, inputs, {"the run": source.run_dir})
    check_recorded(tok_dir, source.recorded_tokenizer(), source.run_dir or source.path)
    method = choose_method(source, ptq, dequantize)
    requested = pack.format_flags(q_bits, q_group_size, q_mode)

    data, skipped = None, "disabled (--no-parity-check)"
    if parity_check:
        got = parity_data_for(source, parity_data, parity_batches, tok_dir)
        data, skipped = (got, None) if isinstance(got, ParityData) else (None, got)
        if skipped:
            logger.warning("parity check skipped: %s", skipped)
        else:
            check_output(mlx_path, force, {"the parity data": data.path})

    logger.info("loading %s", source.describe())
    model = _load_model(source)
    check_source_finite(source, model)
    train_dtype = pack.float_dtype(model)

    logger.info("%s export to %s", method, mlx_path)
    block, qcfg, losses = prepare_export(source, model, method, requested, data)
    check_loss(
        "the validation loss of the model before export",
        losses["ref"],
        f"{source.path} on {data.description if data else '?'}",
        "its weights are finite but its forward overflows (a diverged run); convert an "
        "earlier checkpoint",
    )
    scale_dtype = qcfg.mx_scale_dtype if qcfg is not None and block is not None else None
    if out_dtype is None:
        src_dtype = source.config.get("torch_dtype") if source.kind == "mlx" else None
        if src_dtype in pack.DTYPES:
            out_dtype = getattr(mx, src_dtype)  # what mlx_lm.convert defaults to
        else:
            out_dtype = pack.default_dtype(train_dtype, scale_dtype)
    pack.cast_model(model, out_dtype, scale_dtype)
    check_model(
        model,
        f"the {pack.dtype_name(out_dtype)} export of {source.path}",
        f"weights beyond {pack.dtype_name(out_dtype)}'s range; pass --dtype float32",
    )
    half = data is not None and block is not None and out_dtype != mx.float32
    if half and mx.default_device() == mx.cpu:
        logger.warning(
            "the parity check runs the %s model on MLX's CPU backend, whose quantized "
            "kernels are ~20x slower in half precision; --parity-batches 1 shortens it",
            pack.dtype_name(out_dtype),
        )

    from mlx_lm.utils import compute_bits_per_weight

    config = {
        k: v
        for k, v in source.config.items()
        if not k.startswith("quantization") and k not in REMOTE_CODE_KEYS  # never code
    }
    if block is not None:
        config["quantization"] = block
    tolerance = parity_tolerance if parity_tolerance is not None else default_tolerance(out_dtype)
    result = ConvertResult(
        mlx_path=str(mlx_path),
        source=str(source.run_dir or source.path),
        source_kind=source.kind,
        step=source.step,
        method=method,
        quantization=block,
        dtype=pack.dtype_name(out_dtype),
        bits_per_weight=round(float(compute_bits_per_weight(model)), 4),
        num_parameters=0,
        total_bytes=0,
        files={},
        layers=pack.count_layers(model),
        parity_skipped=skipped,
        options=options,
    )
    with staged_dir(mlx_path, force) as tmp:
        # donate: the reload below needs the memory
        written = save_weights(tmp, model, donate=True)
        result.num_parameters, result.total_bytes, result.files = written
        del model
        save_tokenizer(tmp, tok_dir, source.vocab_size)
        save_config(tmp, config, pending=True)  # config.json only once verified
        if data is not None:
            report = check_parity(tmp, data, losses, tolerance)
            result.parity = report.to_dict()
            if not report.passed:
                raise ParityError(parity_message(report, mlx_path), report)
        commit_config(tmp)
        _check_tokenizer_loads(tmp)
        result.seconds = round(time.perf_counter() - t0, 3)
        write_result(tmp, model_card(result), result.to_dict())
    logger.info("wrote %s (%.3f bits per weight)", mlx_path, result.bits_per_weight)
    return result


def _check_tokenizer_loads(path: Path) -> None:
    """The shipped tokenizer loads from the complete directory, as `mlx_lm.load` loads it."""
    from mlx_lm.utils import load_tokenizer

    try:
        load_tokenizer(path)
    except (OSError, ValueError) as e:
        raise ConvertError(f"the shipped tokenizer does not load with mlx-lm ({e})") from e


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


def _load_model(source: ModelSource) -> nn.Module:
    """A checkpoint's model as the trainer saved it (prepared, fake quant set), or an mlx-lm
    directory's through mlx-lm's own loader (quantized layers included)."""
    if source.kind != "checkpoint":
        try:
            return load_float(source, allow_quantized=True)[0]
        except ValueError as e:
            raise ConvertError(str(e)) from e
    try:
        model = build_model(source.checkpoint)
    except ValueError as e:
        raise ConvertError(str(e)) from None
    source.checkpoint.weights = {}  # the model holds them now
    return model


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


def parity_data_for(source: ModelSource, parity_data, parity_batches, tok_dir) -> ParityData | str:
    """Validation batches for the check, batched as the trainer did, or why there are none."""
    from ..data.resolve import is_prepared
    from ..train.config import load_config

    seq_len, batch_size, eval_batches = 128, 8, 8
    data_dir, missing = None, "no run config.yaml"
    run_dir = source.run_dir
    if run_dir is not None and (run_dir / "config.yaml").is_file():
        try:
            cfg = load_config(run_dir / "config.yaml")
        except (OSError, ValueError, TypeError) as e:
            raise ConvertError(
                f"{run_dir / 'config.yaml'}: cannot read the run config ({e})"
            ) from e
        seq_len, batch_size, eval_batches = cfg.seq_len, cfg.batch_size, cfg.eval_batches
        # The shards the trainer used (absolute path in state.json), else its --data when that
        # was a prepared directory (relative to where training ran, or beside the run).
        shards = (source.state.get("data") or {}).get("shards")
        candidates = [Path(shards)] if shards else []
        if isinstance(cfg.data, list) and len(cfg.data) == 1:
            d = Path(str(cfg.data[0])).expanduser()
            candidates += [d, run_dir.parent / d, run_dir / d]
        data_dir = next((c for c in candidates if is_prepared(c)), None)
        missing = f"the run's data ({cfg.data or 'default corpus'}) is not prepared data here"
    if parity_data is not None:
        path = Path(parity_data)
        if not path.exists():
            raise ConvertError(f"--parity-data {path}: no such file or directory")
    elif data_dir is not None:
        path = data_dir
    else:
        return (
            f"no validation data for {source.path} ({missing}); pass --parity-data "
            "(a prepared data dir, a .npy of token ids or text files)"
        )
    # The run's eval batches, capped: MLX's CPU quantized kernels run at ~1 GFLOP/s (far less
    # in half precision), and a wrong grid shows on the first few thousand tokens already.
    cap = max(1, PARITY_TOKENS // max(batch_size * seq_len, 1))
    return load_parity_data(
        path,
        seq_len=seq_len,
        batch_size=batch_size,
        max_batches=parity_batches or min(eval_batches or cap, cap),
        vocab_size=source.vocab_size or (1 << 31),
        tokenizer_dir=tok_dir,
    )


def losses_before_export(
    model: nn.Module, data: ParityData | None, *modes: str, ref: str = "the model before export"
) -> dict[str, float | None]:
    """Validation loss of the model as it is ("ref") and in `mlx_qat.eval` `modes`: "fp" (fake
    quant off), "ptq" (min/max at each layer's format)."""
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
    """Turn the loaded model into the one to save; return (quantization block, config, losses
    before export: None without parity data)."""
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
