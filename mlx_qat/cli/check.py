"""`mlx_qat.check` / `python -m mlx_qat check`: run the fused fake-quant kernels of this
machine's GPU backend (Metal on a Mac, CUDA on NVIDIA) against the pure-MLX reference over
every quantizer, mode, bit width, group size and dtype, and print a pass/fail table.

Without a GPU it checks the CPU fast path against the reference instead, and says so.
Exit status: 0 every case matches, 1 a mismatch (the table names the kernel, the case and the
size of the disagreement).
"""

from __future__ import annotations

from .common import add_common, verb_main, verb_parser


def build_parser():
    """The flags of `mlx_qat.check`."""
    p = verb_parser("check", "Check the fused GPU kernels against the reference on this machine.")
    add_common(p)  # --quiet: only the failing rows and the verdict
    return p


def _run(opts: dict) -> int:
    from ..quant import kernel_check

    report = kernel_check.check_backend()
    print(kernel_check.format_report(report, failures_only=bool(opts["quiet"])))
    return report.exit_code


main = verb_main("check", build_parser, _run)
