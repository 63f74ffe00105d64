"""`python -m mlx_qat.blas`: runs a module or a script with OpenBLAS preloaded (when present)."""

from __future__ import annotations

import os
import subprocess
import sys

from mlx_qat.blas import find_openblas


def test_script_and_module_run_with_openblas_preloaded_and_their_arguments(tmp_path):
    script = tmp_path / "show.py"
    script.write_text(
        "import os, sys; print(os.environ.get('LD_PRELOAD', ''), '|', sys.argv[1:])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MLX_QAT_BLAS_REEXEC")}
    lib = find_openblas()
    for how in ([str(script)], ["-m", "show"]):
        r = subprocess.run(
            [sys.executable, "-m", "mlx_qat.blas", *how, "a", "--b"],
            capture_output=True, text=True, env={**env, "PYTHONPATH": str(tmp_path)}, timeout=60,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        preload, args = (part.strip() for part in r.stdout.split("|"))
        assert args == "['a', '--b']"
        assert (lib in preload) if lib else preload == ""


def test_bad_usage_names_both_forms(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "mlx_qat.blas", str(tmp_path / "missing.py")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 1 and "-m MODULE" in r.stderr and "SCRIPT.py" in r.stderr
