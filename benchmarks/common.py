"""What every benchmark records about the machine it ran on (one definition for all)."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """Platform, CPU, cores, MLX device, package versions, OpenBLAS and load average."""
    import mlx.core as mx

    vers = {"python": platform.python_version()}
    for pkg in ("mlx", "mlx-lm", "mlx_qat"):
        try:
            vers[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            vers[pkg] = None
    return {
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "python": vers["python"],
        "mlx": mx.__version__,
        "mlx_lm": vers["mlx-lm"],
        "device": str(mx.default_device()),
        "openblas": "openblas" in os.environ.get("LD_PRELOAD", ""),
        "versions": vers,
        "load_avg_1m": os.getloadavg()[0],
    }
