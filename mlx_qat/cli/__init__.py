"""The command line: `python -m mlx_qat <verb> ...` and the `mlx_qat.<verb>` console scripts.

One module per verb (`VERBS`), built on `cli.common`; this module only dispatches. The process
first re-executes itself with Debian's OpenBLAS preloaded on Linux (`mlx_qat.blas`).
`python -m mlx_qat --debug <verb>` is `<verb> --debug`.
"""

from __future__ import annotations

import sys
from importlib import import_module

VERBS = {
    "data": "text → tokenizer + token shards",
    "train": "FP phase → QAT phase, checkpoints, FP twin",
    "eval": "FP / QAT / PTQ loss of a run or checkpoint",
    "convert": "checkpoint → MLX model dir that mlx_lm.load reads",
    "plan": "the FP/QAT split a config would use (nothing is trained)",
    "check": "the fused GPU kernels against the reference, on this machine",
    "sweep": "a scaling-law grid of runs with shared FP trunks -> results.jsonl",
    "fit": "the QAT loss law and f-hat's a fitted to sweep results -> fit.json, plots",
    "diagnose": "loss-basin diagnostics: PTQ fine / QAT needed / change the format",
}


def _usage() -> str:
    rows = "\n".join(f"  {v:<8} {what}" for v, what in VERBS.items())
    return (
        "usage: python -m mlx_qat [--debug] <verb> [args...]   (<verb> --help for its flags)\n"
        + rows
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m mlx_qat <verb> [args]`: run the verb's `main`; returns its exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["--debug"]:  # a global flag before the verb: the verb's own --debug
        args = [*args[1:2], "--debug", *args[2:]] if len(args) > 1 else []
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    verb, rest = args[0], args[1:]
    if verb not in VERBS:
        print(f"mlx_qat: unknown verb {verb!r}\n{_usage()}", file=sys.stderr)
        return 2
    if argv is None:
        from ..blas import reexec_with_openblas

        reexec_with_openblas(["-m", "mlx_qat", verb, *rest])
    return import_module(f"{__name__}.{verb}").main(rest)
