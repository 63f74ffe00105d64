"""Starting local `mlx.launch` ring jobs (shared by tests/test_distributed_train.py and
benchmarks/bench_distributed.py)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

LAUNCH = Path(sys.executable).with_name("mlx.launch")


def free_port_pair() -> int:
    """A starting port p with p and p + 1 free (ring rank r listens on p + r)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", p + 1))
            return p
        except OSError:
            continue
    raise RuntimeError("no two free consecutive ports")


def ring_command(script: str | Path, *args: str, n: int = 2) -> list[str]:
    """`mlx.launch --backend ring -n N --python PYTHON -- SCRIPT ARGS` on this machine."""
    return [str(LAUNCH), "--backend", "ring", "-n", str(n), "--starting-port",
            str(free_port_pair()), "--python", sys.executable, "--", str(script), *args]  # fmt: skip
