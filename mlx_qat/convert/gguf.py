"""`import_gguf`: a llama-architecture GGUF file → an mlx-lm model directory.

    >>> from mlx_qat.convert.gguf import import_gguf
    >>> r = import_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2")   # float32, ggml's grid
    >>> r.check["passed"]

Read (`gguf_read`), mapped onto mlx-lm's llama (`gguf_llama`), written like every export
(`write`). The tokenizer: a GGUF file stores the vocabulary, merges, scores, token types,
special token ids (`tokenizer.ggml.*`) and chat template as metadata; transformers'
`convert_gguf_tokenizer` turns them into a `tokenizers` backend. Its own entry point
(`from_pretrained(..., gguf_file=...)`) needs PyTorch, so here the metadata comes from the `gguf`
package's reader, renamed with transformers' own table (`GGUF_TOKENIZER_MAPPING`) as its
`get_gguf_tokenizer` does; `tokenizer.save_tokenizer` ships its data files only.

Two weight formats:

* float (default): every weight dequantized to float32, which holds ggml's grid exactly.
  `dtype="float16"`/`"bfloat16"` halves the size but rounds the grid.
* `quantize=True`: Q4_0/Q4_1/Q8_0 stay quantized in MLX's affine format at group size 32 (bits
  4, 4, 8), which holds them exactly; other quantized types are refused. Every float parameter,
  scales and biases included, is cast to `dtype` (default float16), as `pack.cast_model` does:
  MLX dequantizes in the scales' dtype. float16 keeps ggml's float16 scales and biases, but its
  dequantized weights d·q + m are rounded to float16 (as in any float16 inference); float32
  computes ggml's grid exactly; bfloat16 also rounds the scales (a warning).

Non-finite values are refused by name (`errors`): every tensor (random bytes in a Q4_1 block
give NaN scales; a flipped exponent gives inf, which would pass the check below), the
check-text loss and every parameter after the cast. The check before publishing: the staged
directory, loaded back by mlx-lm's own loader, must hold exactly the model built here (model
arguments, every parameter bit for bit, quantized formats). Before the cast, the built model's
loss on `CHECK_TEXT` is reported: a trained model sits far below chance, ln(vocab_size). Peak
memory is about twice the model (built + loaded).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from ..fileio import sha256_file
from . import write
from .card import gguf_card, summary_lines
from .errors import ConvertError, ParityError, check_loss, check_model
from .gguf_llama import (
    ARCH,
    build_model,
    check_architecture,
    check_gguf_tensors,
    compare_loaded,
    llama_config,
    quantization_block,
    to_mlx_weights,
)
from .gguf_read import load_tensors, read_header
from .pack import cast_model, dtype_name, parse_dtype
from .parity import load_staged
from .tokenizer import save_tokenizer

logger = logging.getLogger(__name__)

CHECK_TEXT = (
    "The village sat at the bottom of a long valley, where the river slowed and spread into "
    "a wide, shallow lake. In the summer the children swam there every afternoon, and in the "
    "winter, when the water froze, the whole village came down to skate."
)


@dataclass
class GGUFImportResult:
    """What `import_gguf` wrote and measured (also saved as `mlx_qat.json` in the output)."""

    mlx_path: str
    source: str
    source_sha256: str
    name: str | None
    tensor_types: dict[str, int]
    method: str  # "float" or "quantized"
    quantization: dict | None
    dtype: str
    bits_per_weight: float
    num_parameters: int
    total_bytes: int
    files: dict[str, int]
    check_loss: dict | None = None
    check: dict | None = None
    check_skipped: str | None = None
    options: dict = field(default_factory=dict)
    seconds: float = 0.0

    to_dict = asdict  # plain data (dataclasses.asdict)


def check_text_loss(model: nn.Module, ids: list[int], vocab_size: int) -> dict:
    """The model's mean next-token loss (nats) on `ids`, next to chance, ln(vocab_size)."""
    tokens = mx.array(ids)[None]
    logits = model(tokens[:, :-1]).astype(mx.float32)
    loss = float(nn.losses.cross_entropy(logits, tokens[:, 1:], reduction="mean"))
    chance = math.log(vocab_size)
    if loss > 0.8 * chance:
        logger.warning(
            "the imported model's loss on the check text is %.3f nats/token, near chance "
            "(ln %d = %.3f): the GGUF weights look untrained or were not read as meant",
            loss,
            vocab_size,
            chance,
        )
    return {"tokens": len(ids) - 1, "loss": loss, "chance": chance}


def _check_ids(path: Path, vocab_size: int) -> list[int]:
    from mlx_lm.utils import load_tokenizer

    try:
        ids = list(load_tokenizer(path).encode(CHECK_TEXT))
    except (OSError, ValueError) as e:
        raise ConvertError(f"the shipped tokenizer does not load with mlx-lm ({e})") from e
    if len(ids) < 2 or max(ids) >= vocab_size:
        raise ConvertError(
            f"the tokenizer built from the GGUF vocabulary encodes the check text as {ids[:8]}..., "
            f"which the model (vocab_size {vocab_size}) cannot read"
        )
    return ids


def import_gguf(
    gguf_path: str | Path,
    mlx_path: str | Path = "mlx_model",
    *,
    dtype: str | None = None,
    quantize: bool = False,
    force: bool = False,
    check: bool = True,
) -> GGUFImportResult:
    """Import a llama-architecture GGUF file as an mlx-lm model directory.

    Args:
        gguf_path: the `.gguf` file (F32/F16/Q4_0/Q4_1/Q8_0 tensors through `mx.load`; other
            types the `gguf` package dequantizes, float output only).
        mlx_path: output directory (built as `<mlx_path>.tmp-<pid>`, renamed when complete).
        dtype: "float32" (default for float weights: ggml's grid exactly), "float16" (default
            with `quantize`) or "bfloat16", for float parameters, scales and biases included.
        quantize: keep Q4_0/Q4_1/Q8_0 tensors quantized (MLX affine, group size 32, exact).
        force: replace an existing `mlx_path` (only a model directory; `write.check_output`).
        check: require the staged directory, loaded by mlx-lm, to be the built model exactly.

    Returns:
        A `GGUFImportResult`. Raises `ConvertError` for a bad input (not GGUF, another
        architecture, an unreadable tensor type) and `ParityError` when the check fails.

    Example:
        >>> import_gguf("model.Q8_0.gguf", "model_mlx", quantize=True)
    """
    t0 = time.perf_counter()
    options = {k: str(v) if isinstance(v, Path) else v for k, v in locals().items() if k != "t0"}
    gguf_path, mlx_path = Path(gguf_path).expanduser(), Path(mlx_path).expanduser()
    out_dtype = parse_dtype(dtype, mx.float16 if quantize else mx.float32)
    write.check_output(mlx_path, force, {"the input": gguf_path})
    header = read_header(gguf_path)
    check_architecture(header)
    config = llama_config(header)
    logger.info("loading %s (%s)", gguf_path, header.type_counts())
    tensors = load_tensors(header, keep_quantized=quantize)
    check_gguf_tensors(header, tensors)
    weights = to_mlx_weights(header, tensors, config)
    del tensors
    block, specs = quantization_block(weights)
    if block is not None:
        config["quantization"] = block
    elif quantize:
        logger.warning("no Q4_0/Q4_1/Q8_0 tensors in %s: the import is a float model", gguf_path)
    if block is not None and out_dtype == mx.bfloat16:
        logger.warning(
            "bfloat16 rounds ggml's float16 scales and biases (8 significant bits, not 11); "
            "--dtype float16 keeps them exact, float32 also computes ggml's grid exactly"
        )
    config["torch_dtype"] = dtype_name(out_dtype)
    model = build_model(config, weights, specs)
    del weights

    from mlx_lm.utils import compute_bits_per_weight

    result = GGUFImportResult(
        mlx_path=str(mlx_path),
        source=str(gguf_path),
        source_sha256=sha256_file(gguf_path),
        name=header.metadata.get("general.name"),
        tensor_types=header.type_counts(),
        method="quantized" if block else "float",
        quantization=block,
        dtype=dtype_name(out_dtype),
        bits_per_weight=0.0,
        num_parameters=0,
        total_bytes=0,
        files={},
        check_skipped=None if check else "disabled (--no-parity-check)",
        options=options,
    )
    with tempfile.TemporaryDirectory(prefix="mlx_qat_gguf_tokenizer_") as scratch:
        save_gguf_tokenizer(header.metadata, ARCH, Path(scratch))
        with write.staged_dir(mlx_path, force) as tmp:
            save_tokenizer(tmp, Path(scratch), config["vocab_size"])
            ids = _check_ids(tmp, config["vocab_size"])
            result.check_loss = check_text_loss(model, ids, config["vocab_size"])
            check_loss(
                "the imported model's loss on the check text",
                result.check_loss["loss"],
                f"GGUF file {gguf_path}",
                "its weights are finite but the forward overflows; the file is not a usable "
                "model (download it again, or convert the original Hugging Face model with "
                "mlx_lm.convert)",
            )
            cast_model(model, out_dtype)
            check_model(
                model,
                f"the import of {gguf_path} in {dtype_name(out_dtype)}",
                "the cast overflowed; pass --dtype float32",
            )
            result.bits_per_weight = round(float(compute_bits_per_weight(model)), 4)
            written = write.save_weights(tmp, model)
            result.num_parameters, result.total_bytes, result.files = written
            write.save_config(tmp, config, pending=True)  # config.json only once verified
            if check:
                result.check = compare_loaded(model, load_staged(tmp))
                if not result.check["passed"]:
                    raise ParityError(
                        f"import check failed for {mlx_path}: the directory loaded by mlx-lm is "
                        "not the model built from the GGUF tensors "
                        f"({'; '.join(result.check['differences'])}); nothing was written"
                    )
            del model
            write.commit_config(tmp)
            result.seconds = round(time.perf_counter() - t0, 3)
            write.write_result(tmp, gguf_card(result), result.to_dict())
    logger.info("wrote %s (%.3f bits per weight)", mlx_path, result.bits_per_weight)
    return result


# Which special token each `tokenizer.ggml.*_id` names (transformers' `_SPECIAL_TOKENS`).
SPECIAL_TOKENS = {
    "bos_token": "bos_token_id",
    "eos_token": "eos_token_id",
    "unk_token": "unknown_token_id",
    "pad_token": "padding_token_id",
}


def _converter():
    """transformers' GGUF tokenizer conversion: `(mapping, convert)`, newest layout first."""
    try:  # transformers >= 5.2x: integrations/gguf/
        from transformers.integrations.gguf.gguf_tokenizer_mapping import (
            GGUF_TOKENIZER_MAPPING,
            convert_gguf_tokenizer,
        )
    except ImportError:
        try:  # older: integrations/ggml.py
            from transformers.integrations.ggml import (
                GGUF_TOKENIZER_MAPPING,
                convert_gguf_tokenizer,
            )
        except ImportError as e:
            raise ConvertError(
                f"this transformers has no GGUF tokenizer conversion ({e}); upgrade it: "
                "pip install -U transformers"
            ) from None
    return GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer


def tokenizer_fields(metadata: dict[str, Any]) -> tuple[dict, dict]:
    """`(tokenizer_dict, tokenizer_config)` from GGUF metadata, under transformers' names."""
    mapping, _ = _converter()
    tok, cfg = (
        {
            n: metadata[f"tokenizer.{k}"]
            for k, n in mapping.get(g, {}).items()
            if f"tokenizer.{k}" in metadata
        }
        for g in ("tokenizer", "tokenizer_config")
    )
    if "tokens" not in tok:
        raise ConvertError(
            "the GGUF file has no tokenizer.ggml.tokens (no vocabulary), so no tokenizer can be "
            "built from it; convert the original Hugging Face model with mlx_lm.convert instead"
        )
    if tok.get("tokenizer_type") == "llama":
        # llama.cpp adds BOS to a sentencepiece vocabulary that does not say otherwise.
        cfg.setdefault("add_bos_token", True)
    for name, key in SPECIAL_TOKENS.items():
        i = metadata.get(f"tokenizer.ggml.{key}")
        cfg[name] = (
            tok["tokens"][int(i)] if i is not None and 0 <= int(i) < len(tok["tokens"]) else None
        )
    # Keys of the older mapping that are not tokenizer settings.
    for k in ("model_type", "bos_token_id", "eos_token_id", "unk_token_id", "pad_token_id"):
        cfg.pop(k, None)
    return tok, {k: v for k, v in cfg.items() if v is not None}


def build_tokenizer(metadata: dict[str, Any], architecture: str):
    """A `transformers` fast tokenizer from the GGUF vocabulary, special tokens, chat template."""
    from transformers import PreTrainedTokenizerFast

    _, convert = _converter()
    tok, cfg = tokenizer_fields(metadata)
    try:
        backend, extra = convert(architecture, tok)
    except (KeyError, ValueError) as e:
        raise ConvertError(
            f"transformers cannot build a tokenizer from this GGUF file (tokenizer.ggml.model "
            f"{tok.get('tokenizer_type')!r}, pre {tok.get('pre_tokenizer_type')!r}: {e}); "
            "convert the original Hugging Face model with mlx_lm.convert instead"
        ) from e
    return PreTrainedTokenizerFast(tokenizer_object=backend, **{**cfg, **(extra or {})})


def save_gguf_tokenizer(metadata: dict[str, Any], architecture: str, out_dir: Path) -> None:
    """Build the tokenizer and `save_pretrained` it into `out_dir`."""
    tokenizer = build_tokenizer(metadata, architecture)
    tokenizer.save_pretrained(str(out_dir))
    logger.info(
        "tokenizer: %d tokens (%s), chat template %s",
        len(tokenizer),
        metadata.get("tokenizer.ggml.model"),
        "yes" if metadata.get("tokenizer.chat_template") else "none",
    )


def summary(r: GGUFImportResult) -> str:
    """The lines `mlx_qat.convert` prints for a GGUF import."""
    types = ", ".join(f"{n} {t}" for t, n in r.tensor_types.items())
    lines = [
        f"[mlx_qat.convert] GGUF import of {r.source}" + (f" ({r.name})" if r.name else ""),
        f"  tensors          {types}",
        *summary_lines(r),
    ]
    if r.check_loss is not None:
        c = r.check_loss
        lines.append(
            f"  loss             {c['loss']:.4f} nats/token on a {c['tokens']}-token English "
            f"sentence (chance {c['chance']:.2f})"
        )
    if r.check is None:
        lines.append(f"  check            skipped: {r.check_skipped}")
    else:
        lines.append(
            f"  check            loaded by mlx-lm = built: {r.check['parameters']} parameter "
            "tensors bit for bit, config and formats: ok"
        )
    return "\n".join(lines)
