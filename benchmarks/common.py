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


def package_versions(packages=("mlx", "mlx-lm", "mlx_qat")) -> dict:
    """{"python": ..., package: version or None} for the given distributions."""
    vers = {"python": platform.python_version()}
    for pkg in packages:
        try:
            vers[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            vers[pkg] = None
    return vers


def backend() -> str:
    """Where MLX computes by default: "metal", "cuda" or "cpu"."""
    import mlx.core as mx

    from mlx_qat.kernels import cuda_available, metal_available

    if mx.default_device() == mx.gpu:
        if metal_available():
            return "metal"
        if cuda_available():
            return "cuda"
    return "cpu"


def machine() -> dict:
    """Platform, CPU, cores, MLX device and backend, versions, OpenBLAS and load average."""
    import mlx.core as mx

    vers = package_versions()
    return {
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "python": vers["python"],
        "mlx": mx.__version__,
        "mlx_lm": vers["mlx-lm"],
        "device": str(mx.default_device()),
        "backend": backend(),
        "openblas": "openblas" in os.environ.get("LD_PRELOAD", ""),
        "versions": vers,
        "load_avg_1m": os.getloadavg()[0],
    }


def header_lines(command: str, date: str, m: dict) -> list[str]:
    """The Command / Date / Machine / Versions block of a markdown report (`m` = machine())."""
    return [
        "Command:",
        "",
        "```",
        command,
        "```",
        "",
        f"Date: {date}  ",
        f"Machine: {m['platform']}, {m['cpu']}, {m['cores']} cores, MLX device {m['device']}, "
        f"OpenBLAS preloaded: {m['openblas']}, load average {m['load_avg_1m']:.1f}  ",
        f"Versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}  ",
    ]


def run_record(script: str, argv: list[str], args) -> dict:
    """The fields every result json starts with: the command (the script relative to the
    repository, then `argv`), the local date, the machine and the parsed arguments."""
    import datetime

    root = Path(__file__).resolve().parents[1]
    return {
        "command": "python " + " ".join([str(Path(script).resolve().relative_to(root)), *argv]),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
