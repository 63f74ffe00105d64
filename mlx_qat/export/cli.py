"""The `mlx_qat.convert` command: flags mirror `mlx_lm.convert` where they overlap."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

from .errors import ConvertError, ParityError
from .pack import DTYPES
from .write import MAX_FILE_SIZE_GB

MODES = ("affine", "mxfp4", "nvfp4", "mxfp8")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (every option defaults to None so `--config` can fill it)."""
    p = argparse.ArgumentParser(
        prog="mlx_qat.convert",
        description="Export a QAT run/checkpoint (or an mlx-lm model) as an MLX model directory "
        "that mlx_lm.load reads, with a train = deploy loss check.",
    )
    p.add_argument("path", nargs="?", help="run dir, checkpoint dir or mlx-lm model dir")
    p.add_argument("--qat-path", "--model", dest="qat_path", help="same as the positional path")
    p.add_argument("--mlx-path", help="output directory (default: mlx_model)")
    p.add_argument("--q-bits", type=int, help="bits per weight (must match a QAT run)")
    p.add_argument("--q-group-size", type=int, help="group size (must match a QAT run)")
    p.add_argument("--q-mode", choices=MODES, help="quantization mode (must match a QAT run)")
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        help="dtype of float parameters and affine scales/biases (default: the run's "
        "scale_dtype if set, else the trained dtype)",
    )
    p.add_argument(
        "--ptq",
        action="store_true",
        default=None,
        help="round-to-nearest (min/max) PTQ of the float weights instead of the QAT grid",
    )
    p.add_argument(
        "-d",
        "--dequantize",
        action="store_true",
        default=None,
        help="write a float model (fake-quant weights, or a quantized model's float weights)",
    )
    p.add_argument("--force", action="store_true", default=None, help="replace --mlx-path")
    p.add_argument(
        "--tokenizer",
        help="tokenizer dir to ship (default: the run's tokenizer/, or the model's own)",
    )
    p.add_argument(
        "--no-parity-check",
        dest="parity_check",
        action="store_false",
        default=None,
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
        "--max-file-size-gb",
        type=float,
        help=f"shard size of the weight files (default {MAX_FILE_SIZE_GB:g})",
    )
    p.add_argument(
        "-q",
        "--quantize",
        action="store_true",
        help="accepted for mlx_lm.convert compatibility: quantizing is the default",
    )
    p.add_argument("--config", help="YAML file with any of these options (CLI wins)")
    p.add_argument("--quiet", action="store_true", help="print only errors")
    return p


def _options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict:
    """CLI > YAML > defaults."""
    opts: dict = {}
    if args.config:
        try:
            loaded = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            parser.error(f"--config {args.config}: {e}")
        opts.update({str(k).replace("-", "_"): v for k, v in loaded.items()})
    if args.quantize and args.dequantize:
        parser.error("choose either -q/--quantize or -d/--dequantize, not both")
    skip = ("config", "quiet", "quantize")
    cli = {k: v for k, v in vars(args).items() if v is not None and k not in skip}
    if cli.get("path") and cli.get("qat_path"):
        parser.error("give the input once: positional path or --qat-path/--model")
    if "path" in cli:
        cli["qat_path"] = cli.pop("path")
    opts.update(cli)
    opts.pop("path", None)
    if not opts.get("qat_path"):
        parser.error("the input path is required (run dir, checkpoint dir or mlx-lm model dir)")
    from .api import convert

    known = set(convert.__code__.co_varnames[: convert.__code__.co_argcount])
    known |= set(convert.__kwdefaults__ or {})
    unknown = set(opts) - known
    if unknown:
        parser.error(f"unknown options {sorted(unknown)} (from --config {args.config})")
    return opts


def _summary(r) -> str:
    fmt = "float"
    if r.quantization:
        q = r.quantization
        fmt = f"{q.get('mode', 'affine')} {q['bits']}-bit g{q['group_size']}"
        n_over = len([k for k in q if k not in ("group_size", "bits", "mode")])
        fmt += f" (+{n_over} per-layer entries)" if n_over else ""
    lines = [
        f"[mlx_qat.convert] {r.method} export of {r.source}"
        + (f" (step {r.step})" if r.step is not None else ""),
        f"  output           {r.mlx_path}",
        f"  format           {fmt}, {r.dtype}",
        f"  bits per weight  {r.bits_per_weight:.3f}",
        f"  size             {r.total_bytes / 1e6:.2f} MB in {len(r.files)} file(s), "
        f"{r.num_parameters:,} parameters",
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
            f"  parity           rel diff {p['rel_diff']:.2e} <= {p['tolerance']:.0e}: ok "
            f"({p['num_tokens']:,} tokens)",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns 0, or exits with 1 (parity failure) or 2 (bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    opts = _options(args, parser)
    from ..cli import setup_logging

    # Progress as "[INFO] loading ...", like mlx_lm.convert.
    setup_logging(args.quiet, "[%(levelname)s] %(message)s", logging.ERROR)
    from .api import convert

    try:
        result = convert(**opts)
    except ParityError as e:
        print(f"mlx_qat.convert: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except ConvertError as e:
        print(f"mlx_qat.convert: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if not args.quiet:
        print(_summary(result))
    return 0
