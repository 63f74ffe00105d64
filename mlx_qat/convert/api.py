"""`convert`: a training checkpoint (or an mlx-lm model) → an MLX model directory.

Three methods, one tool, so FP, PTQ and QAT numbers come from the same code:

* QAT (default for a checkpoint trained with fake quantization): pack exactly the trained grid.
* PTQ (`ptq=True`, or any float mlx-lm model): round-to-nearest min/max of the float weights,
  at the requested format or the one the run trained for.
* dequantize (`dequantize=True`): a float model; the fake-quant weights of a checkpoint, or
  the float weights of a quantized mlx-lm model (a starting point for QAT fine-tuning).

Choosing and applying the method, and the losses measured before export: `method.py`.

Nothing non-finite is exported (`finite.py`): a NaN or inf parameter of the input, of the
model after the cast to the output dtype, or a non-finite validation loss is refused by name
before anything is written. Each export is checked: the validation loss of the model before export (the fake-quant model)
and of the staged directory loaded back by mlx-lm's loader must agree (`parity.py`); only then
is `config.json` written and the directory renamed into place (`write.py`). The output path,
what `force` may replace and stale temporaries: `output.py`; the tokenizer shipped (data files
only, the run's own by hash): `tokenizer.py`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlx.core as mx

from . import pack
from .card import model_card
from .errors import ConvertError, ParityError
from .finite import check_loss, check_model, check_source_finite
from .method import PARITY_TOKENS, choose_method, parity_data_for, prepare_export
from .parity import ParityData, check_parity, default_tolerance, parity_message
from .source import load_checkpoint_model, load_mlx_model, resolve_source
from .tokenizer import REMOTE_CODE_KEYS, check_recorded, save_tokenizer
from .write import (
    RESULT_FILE,
    check_output,
    commit_config,
    file_sizes,
    save_config,
    save_weights,
    staged_dir,
    write_result,
)

__all__ = ["PARITY_TOKENS", "RESULT_FILE", "ConvertResult", "convert"]

logger = logging.getLogger(__name__)


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

    def to_dict(self) -> dict:
        return asdict(self)


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
    options = {k: v for k, v in locals().items() if k not in ("t0",)}
    options = {k: str(v) if isinstance(v, Path) else v for k, v in options.items()}
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
    if source.kind == "checkpoint":
        model = load_checkpoint_model(source)
    else:
        model = load_mlx_model(source)
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
    if data is not None and block is not None and out_dtype != mx.float32:
        if mx.default_device() == mx.cpu:
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
        index = save_weights(tmp, model, donate=True)  # the reload below needs the memory
        del model
        save_tokenizer(tmp, tok_dir, source.vocab_size)
        save_config(tmp, config, pending=True)  # config.json only once verified
        result.num_parameters = int(index["metadata"]["total_parameters"])
        result.total_bytes = int(index["metadata"]["total_size"])
        result.files = file_sizes(tmp)
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
