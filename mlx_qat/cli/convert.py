"""`mlx_qat.convert`: a QAT run → an MLX model directory that `mlx_lm.load` reads
(`mlx_qat.convert.convert`), or a `.gguf` file imported (`mlx_qat.convert.gguf.import_gguf`,
with the same output rules, `--force`, `--dtype` and check; `-q` keeps its Q4_0/Q4_1/Q8_0
tensors quantized, and the flags that only mean something for a QAT run are refused).

    mlx_qat.convert runs/main --mlx-path mlx_model [--dtype float16] [--ptq] [--dequantize]
    mlx_qat.convert model.Q4_1.gguf --mlx-path mlx_model [-q] [--dtype float16]

Flags mirror `mlx_lm.convert` where they overlap, but for the format flags (`--bits`,
`--group-size`, `--mode`; its `--q-*` spellings are read for one release). Exit status: 0 done,
1 the train = deploy parity check failed, 2 bad input (or usage), an output `--force` may not
replace (`mlx_qat.convert.write`), or one that cannot be written.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from ..convert.card import summary_lines
from ..convert.errors import ConvertError, ParityError
from ..convert.pack import DTYPES
from ..quant.spec import MODES
from .common import add_common, add_renamed, save_resolved, verb_main, verb_parser


def build_parser():
    """The flags of `mlx_qat.convert` (None: the library's default)."""
    p = verb_parser(
        "convert",
        "Export a QAT run/checkpoint (or an mlx-lm model) as an MLX model directory "
        "that mlx_lm.load reads, with a train = deploy loss check; or import a llama GGUF file.",
    )
    p.add_argument(
        "path",
        nargs="?",
        help="run dir, checkpoint dir, mlx-lm model dir, .gguf file or Hugging Face repo id",
    )
    p.add_argument("--qat-path", "--model", dest="qat_path", help="same as the positional path")
    p.add_argument(
        "--revision", help="hub revision (branch, tag or commit) of a Hugging Face repo id"
    )
    p.add_argument("--mlx-path", default="mlx_model", help="output directory (default: mlx_model)")
    # A QAT run's own format (any other is refused), or the one --ptq rounds to.
    bits = p.add_argument("--bits", type=int, help="weight bits (default: the run's, else 4)")
    group_size = p.add_argument(
        "--group-size", type=int, help="quantization group size (default: the run's, else 64)"
    )
    mode = p.add_argument(
        "--mode", choices=MODES, help="MLX quantization mode (default: the run's, else affine)"
    )
    for old, action in (("--q-bits", bits), ("--q-group-size", group_size), ("--q-mode", mode)):
        add_renamed(p, old, action)  # mlx_lm.convert's spelling, read for one release
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        help="dtype of float parameters and affine scales/biases (default: the run's "
        "scale_dtype if set, else the trained dtype)",
    )
    p.add_argument(
        "--ptq",
        action="store_true",
        help="round-to-nearest (min/max) PTQ of the float weights instead of the QAT grid",
    )
    p.add_argument(
        "-d",
        "--dequantize",
        action="store_true",
        help="write a float model (fake-quant weights, or a quantized model's float weights)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing --mlx-path, if it is a model directory (config.json + "
        "model*.safetensors, only files an export writes); anything else is refused",
    )
    p.add_argument(
        "--tokenizer",
        help="tokenizer dir to ship, data files only, never code (default: the run's "
        "tokenizer/, or the model's own); must be the run's by hash when it records one",
    )
    p.add_argument(
        "--no-parity-check",
        dest="parity_check",
        action="store_false",
        default=True,
        help="skip the validation-loss comparison before/after export",
    )
    p.add_argument(
        "--parity-tolerance",
        type=float,
        help="allowed relative loss difference (default 1e-4 float32, 1e-3 float16, 5e-3 bfloat16)",
    )
    p.add_argument(
        "--parity-data",
        help="validation data: prepared data dir, .npy token ids or text files "
        "(default: the run's data)",
    )
    p.add_argument("--parity-batches", type=int, help="validation batches (default: the run's)")
    p.add_argument(
        "-q",
        "--quantize",
        action="store_true",
        help="accepted for mlx_lm.convert compatibility: quantizing is the default; for a "
        ".gguf input, keep Q4_0/Q4_1/Q8_0 tensors quantized (MLX affine g32, exact) instead "
        "of float weights",
    )
    add_common(p)
    return p


# Options of the command that are not `convert()` arguments.
_CLI_ONLY = ("path", "config", "quiet", "quantize", "debug")
# The format flags (as every verb spells them) -> `convert()`'s arguments (mlx_lm.convert's).
_FORMAT_ARGS = {"bits": "q_bits", "group_size": "q_group_size", "mode": "q_mode"}


def _check_input(opts: dict) -> None:
    if opts.get("quantize") and opts.get("dequantize"):
        raise ConvertError("choose either -q/--quantize or -d/--dequantize, not both")
    if opts.get("path") and opts.get("qat_path") and opts["path"] != opts["qat_path"]:
        raise ConvertError("give the input once: positional path or --qat-path/--model")


def _convert_kwargs(opts: dict) -> dict:
    _check_input(opts)
    kw = {_FORMAT_ARGS.get(k, k): v for k, v in opts.items() if k not in _CLI_ONLY}
    kw["qat_path"] = opts.get("path") or opts.get("qat_path")
    if not kw["qat_path"]:
        raise ConvertError(
            "the input path is required (run dir, checkpoint dir, mlx-lm model dir or hub id)"
        )
    return kw


def _summary(r) -> str:
    lines = [
        f"[mlx_qat.convert] {r.method} export of {r.source}"
        + (f" (step {r.step})" if r.step is not None else ""),
        *summary_lines(r),
    ]
    p = r.parity
    if p is None:
        lines.append(f"  parity           skipped: {r.parity_skipped}")
    else:
        if p["fp"] is not None:
            lines.append(f"  loss float       {p['fp']:.6f}")
        if p.get("ptq") is not None and r.method == "qat":
            lines.append(f"  loss PTQ         {p['ptq']:.6f}  (round-to-nearest, same format)")
        lines += [
            f"  loss before      {p['reference']:.6f}",
            f"  loss exported    {p['exported']:.6f}",
            f"  parity           rel diff {p['rel_diff']:.2e} <= {p['tolerance']:.0e}: "
            f"{'ok' if p['passed'] else 'FAILED'} ({p['num_tokens']:,} tokens)",
        ]
    return "\n".join(lines)


# Flags of a QAT export that mean nothing for a GGUF import (refused, not ignored).
_NOT_FOR_GGUF = ("revision", "bits", "group_size", "mode", "ptq", "tokenizer",
                 "parity_data", "parity_batches", "parity_tolerance")  # fmt: skip


def _import_kwargs(opts: dict) -> dict:
    given = [k for k in _NOT_FOR_GGUF if opts.get(k) not in (None, False)]
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ConvertError(
            f"{flags}: not for a GGUF input, which is imported as it is (float weights, or "
            "with -q its own Q4_0/Q4_1/Q8_0 grid); drop them, and quantize or fine-tune the "
            "imported directory afterwards"
        )
    _check_input(opts)
    return {
        "gguf_path": opts.get("path") or opts.get("qat_path"),
        "mlx_path": opts["mlx_path"],
        "dtype": opts.get("dtype"),
        "quantize": bool(opts.get("quantize")),
        "force": bool(opts.get("force")),
        "check": opts.get("parity_check", True),
    }


def _export(run, opts: dict, summary) -> int:
    """`run()`: exit 1 a failed parity check, 2 bad input; else save the settings, print."""
    try:
        result = run()
    except ConvertError as e:  # ParityError is one
        print(f"mlx_qat.convert: error: {e}", file=sys.stderr)
        return 1 if isinstance(e, ParityError) else 2
    save_resolved(Path(result.mlx_path) / "convert.yaml", "convert", opts)
    if not opts["quiet"]:
        print(summary(result))
    return 0


def _run(opts: dict) -> int:
    # Progress as "[INFO] loading ...", like mlx_lm.convert.
    from . import common

    common.setup_logging(bool(opts["quiet"]), "[%(levelname)s] %(message)s", logging.ERROR)
    from ..convert.gguf_read import is_gguf_input

    if is_gguf_input(opts.get("path") or opts.get("qat_path")):
        from ..convert.gguf import import_gguf, summary

        return _export(lambda: import_gguf(**_import_kwargs(opts)), opts, summary)
    from ..convert import convert

    return _export(lambda: convert(**_convert_kwargs(opts)), opts, _summary)


main = verb_main("convert", build_parser, _run)
