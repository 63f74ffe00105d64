"""`convert`: a training checkpoint (or an mlx-lm model) → an MLX model directory.

Three methods, one tool, so FP, PTQ and QAT numbers come from the same code:

* QAT (default for a checkpoint trained with fake quantization): pack exactly the trained grid.
* PTQ (`ptq=True`, or any float mlx-lm model): round-to-nearest min/max of the float weights,
  at the requested format or the one the run trained for.
* dequantize (`dequantize=True`): a float model; the fake-quant weights of a checkpoint, or
  the float weights of a quantized mlx-lm model (a starting point for QAT fine-tuning).

Nothing non-finite is exported (`finite.py`): a NaN or inf parameter of the input, of the
model after the cast to the output dtype, or a non-finite validation loss is refused by name
before anything is written. Each export is checked: the validation loss of the model before export (the fake-quant model)
and of the staged directory loaded back by mlx-lm's loader must agree (`parity.py`); only then
is `config.json` written and the directory renamed into place (`write.py`). The output path,
what `force` may replace and stale temporaries: `output.py`; the tokenizer shipped (data files
only, the run's own by hash): `tokenizer.py`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from ..model_source import ModelSource
from . import pack
from .card import model_card
from .errors import ConvertError, ParityError
from .finite import check_loss, check_model
from .output import check_output
from .parity import (
    ParityData,
    ParityReport,
    check_parity,
    default_tolerance,
    load_parity_data,
    val_loss,
)
from .source import (
    load_checkpoint_model,
    load_mlx_model,
    resolve_source,
    run_eval_setup,
)
from .tokenizer import REMOTE_CODE_KEYS, check_recorded, save_tokenizer
from .write import (
    commit_config,
    file_sizes,
    save_config,
    save_weights,
    staged_dir,
)

logger = logging.getLogger(__name__)

RESULT_FILE = "mlx_qat.json"
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

    def to_dict(self) -> dict:
        return asdict(self)


def _dtype(name: str | None) -> mx.Dtype | None:
    if name is None:
        return None
    if name not in pack.DTYPES:
        raise ConvertError(f"--dtype {name}: choose one of {', '.join(pack.DTYPES)}")
    return getattr(mx, name)


def _dtype_name(d: mx.Dtype) -> str:
    return str(d).rsplit(".", 1)[-1]


def _default_batches(setup) -> int:
    # The run's eval batches, capped: MLX's CPU quantized kernels run at ~1 GFLOP/s (far less
    # in half precision), and a wrong grid shows on the first few thousand tokens already.
    per_batch = max(setup.batch_size * setup.seq_len, 1)
    cap = max(1, PARITY_TOKENS // per_batch)
    return min(setup.eval_batches or cap, cap)


def _parity_data(source: ModelSource, parity_data, parity_batches, tok_dir) -> ParityData | str:
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
        max_batches=parity_batches or _default_batches(setup),
        vocab_size=source.vocab_size or (1 << 31),
        tokenizer_dir=tok_dir,
    )


def _losses(
    model: nn.Module, data: ParityData | None, *modes: str, ref: str = "the model before export"
) -> dict[str, float | None]:
    """Validation loss of the model before export: as it is ("ref") and in eval `modes`.

    Modes are `mlx_qat.eval`'s: "fp" (fake quant off), "ptq" (min/max at each layer's format).
    """
    out: dict[str, float | None] = {"ref": None, **dict.fromkeys(modes)}
    if data is None:
        return out
    from ..eval_modes import eval_mode
    from ..prepare import qat_layers

    out["ref"] = val_loss(model, data.batches, ref)
    if any(True for _ in qat_layers(model)):
        names = {"fp": "its float weights (fake quant off)", "ptq": "round-to-nearest PTQ"}
        for mode in modes:
            with eval_mode(model, mode):
                out[mode] = val_loss(model, data.batches, names.get(mode, mode))
    return out


def _prepare_export(source: ModelSource, model, method: str, requested, data):
    """Turn the loaded model into the one to save; return (quantization block, config, losses).

    `losses` (None without parity data): "ref" (the model as exported, before packing), "fp"
    (float weights) and "ptq" (round-to-nearest at the same format).
    """
    from ..prepare import prepare

    qcfg = source.qat_config if source.kind == "checkpoint" else None
    if method == "dequantize":
        if requested is not None:
            raise ConvertError("--dequantize writes a float model; drop --bits/--group-size/--mode")
        losses = _losses(model, data, "fp")
        if source.kind == "checkpoint":
            pack.to_float(model, dequantized=True)
        elif source.quantized:
            pack.dequantize_stock(model)
        return None, None, losses
    if method == "ptq":
        cfg = pack.ptq_config(qcfg, requested)
        pack.to_float(model, dequantized=False)  # PTQ starts from the float weights
        fp = _losses(model, data, ref="the float model")["ref"]
        prepare(model, cfg, enabled=True)
        losses = _losses(model, data)
        losses.update(fp=fp, ptq=losses["ref"])
        return pack.quantize_model(model, cfg), cfg, losses
    pack.check_trained_format(qcfg, requested, source.path)
    losses = _losses(model, data, "fp", "ptq")
    return pack.quantize_model(model, qcfg), qcfg, losses


def _method(source: ModelSource, ptq: bool, dequantize: bool) -> str:
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
    out_dtype = _dtype(dtype)
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
    method = _method(source, ptq, dequantize)
    requested = pack.format_flags(q_bits, q_group_size, q_mode)

    data, skipped = None, "disabled (--no-parity-check)"
    if parity_check:
        got = _parity_data(source, parity_data, parity_batches, tok_dir)
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
    _check_source_finite(source, model)
    train_dtype = pack.float_dtype(model)

    logger.info("%s export to %s", method, mlx_path)
    block, qcfg, losses = _prepare_export(source, model, method, requested, data)
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
        f"the {_dtype_name(out_dtype)} export of {source.path}",
        f"weights beyond {_dtype_name(out_dtype)}'s range; pass --dtype float32",
    )
    if data is not None and block is not None and out_dtype != mx.float32:
        if mx.default_device() == mx.cpu:
            logger.warning(
                "the parity check runs the %s model on MLX's CPU backend, whose quantized "
                "kernels are ~20x slower in half precision; --parity-batches 1 shortens it",
                _dtype_name(out_dtype),
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
        dtype=_dtype_name(out_dtype),
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
                raise ParityError(_parity_message(report, mlx_path), report)
        commit_config(tmp)
        _check_tokenizer_loads(tmp)
        result.seconds = round(time.perf_counter() - t0, 3)
        (tmp / "README.md").write_text(model_card(result), encoding="utf-8")
        (tmp / RESULT_FILE).write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
    logger.info("wrote %s (%.3f bits per weight)", mlx_path, result.bits_per_weight)
    return result


def _check_source_finite(source: ModelSource, model: nn.Module) -> None:
    """Refuse an input with a NaN or inf parameter, naming it, before anything is computed."""
    if source.kind == "checkpoint":
        where = f"checkpoint {source.path}"
        fix = (
            "the run diverged before it was saved or its weights were edited; convert an "
            "earlier checkpoint (its checkpoints/step_XXXXXXXX directory)"
        )
    else:
        where = f"model {source.path}"
        fix = "its weight files are damaged; download or convert the model again"
    check_model(model, where, fix)


def _check_tokenizer_loads(path: Path) -> None:
    """The shipped tokenizer loads from the complete directory, as `mlx_lm.load` loads it."""
    from mlx_lm.utils import load_tokenizer

    try:
        load_tokenizer(path)
    except (OSError, ValueError) as e:
        raise ConvertError(f"the shipped tokenizer does not load with mlx-lm ({e})") from e


def _parity_message(report: ParityReport, mlx_path: Path) -> str:
    if not math.isfinite(report.exported):
        return (
            f"parity check failed for {mlx_path}: validation loss {report.exported} after export "
            f"vs {report.reference:.6f} before: the exported model computes NaN/inf; nothing "
            "was written. Try --dtype float32 (a half-precision forward can overflow)"
        )
    return (
        f"parity check failed for {mlx_path}: validation loss {report.exported:.6f} after export "
        f"vs {report.reference:.6f} before (relative difference {report.rel_diff:.2e} > "
        f"tolerance {report.tolerance:.0e}); nothing was written. If the difference is expected "
        "(e.g. a half-precision --dtype), raise --parity-tolerance or pass --no-parity-check"
    )
