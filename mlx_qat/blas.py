"""Use an optimized BLAS for MLX's CPU backend on Linux.

The PyPI ``mlx-cpu`` wheel links the reference netlib BLAS (~2 GFLOP/s for sgemm on x86). When
Debian's OpenBLAS (``libopenblas0-pthread``) is installed, preloading it replaces the BLAS
symbols MLX calls and makes CPU matmuls ~20x faster. A library cannot preload after start-up, so
entry points call :func:`reexec_with_openblas` first: it re-executes the current command once
with ``LD_PRELOAD`` set. Opt out with ``MLX_QAT_NO_OPENBLAS=1``.

``python -m mlx_qat.blas -m pytest ...`` runs any module, and ``python -m mlx_qat.blas
script.py ...`` any script (e.g. the ``examples/``), with OpenBLAS preloaded.
"""

from __future__ import annotations

import os
import subprocess
import sys

_OPT_OUT = "MLX_QAT_NO_OPENBLAS"
_MARK = "MLX_QAT_BLAS_REEXEC"


def find_openblas() -> str | None:
    """The path of ``libopenblas.so.0`` from the linker cache, or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        out = subprocess.run(
            ["ldconfig", "-p"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        name, _, path = line.partition("=>")
        path = path.strip()
        if name.strip().startswith("libopenblas.so.0") and os.path.exists(path):
            return path
    return None


def openblas_active() -> bool:
    """True when this process was started with OpenBLAS preloaded."""
    return "openblas" in os.environ.get("LD_PRELOAD", "")


def _env(lib: str | None) -> dict:
    # this environment, with `lib` preloaded and the re-exec marked
    env = dict(os.environ)
    if lib:
        env["LD_PRELOAD"] = ":".join(p for p in (lib, env.get("LD_PRELOAD", "")) if p)
    env[_MARK] = "1"
    return env


def reexec_with_openblas(argv: list[str] | None = None) -> None:
    """Re-exec this process with OpenBLAS preloaded, when possible and not yet done; returns
    (doing nothing) on macOS, when OpenBLAS is missing or active, or with the opt-out set."""
    if os.environ.get(_OPT_OUT) or os.environ.get(_MARK) or openblas_active():
        return
    lib = find_openblas()
    if lib is None:
        return
    argv = list(sys.argv if argv is None else argv)
    sys.stdout.flush()
    sys.stderr.flush()
    # keep interpreter flags such as -X when re-executing
    xopts = [f"-X{k}" if v is True else f"-X{k}={v}" for k, v in sys._xoptions.items()]
    os.execve(sys.executable, [sys.executable, *xopts, *argv], _env(lib))


def main() -> None:
    """``python -m mlx_qat.blas -m MODULE args...`` or ``python -m mlx_qat.blas SCRIPT.py
    args...``: run it with OpenBLAS preloaded."""
    args = sys.argv[1:]
    if (
        not args
        or (args[0] == "-m" and len(args) < 2)
        or (args[0] != "-m" and not os.path.isfile(args[0]))
    ):
        sys.exit("usage: python -m mlx_qat.blas -m MODULE [ARGS...] | SCRIPT.py [ARGS...]")
    lib = None if (os.environ.get(_OPT_OUT) or openblas_active()) else find_openblas()
    os.execve(sys.executable, [sys.executable, *args], _env(lib))


if __name__ == "__main__":
    main()
