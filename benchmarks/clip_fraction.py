"""How many latent weights lie outside their learned grid: x = (w − b)/s outside [−½, n + ½],
the weights `quant/learned_affine.py` clips and gives no gradient. One line per run, each layer
at its own width (the main job keeps the embedding at 4 bits whatever `--bits` is).

    python benchmarks/clip_fraction.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mlx.core as mx  # noqa: E402

from mlx_qat.checkpoint import build_model  # noqa: E402
from mlx_qat.prepare import qat_layers  # noqa: E402
from mlx_qat.quant.affine import group  # noqa: E402
from mlx_qat.quant.learned_affine import codes  # noqa: E402


def outside(run: str) -> tuple[int, int]:
    """(weights outside their grid, weights under a learned grid) in `run`'s latest checkpoint."""
    out = total = 0
    for _, layer in qat_layers(build_model(run)):
        q = layer.quantizer
        if not hasattr(q, "scale"):  # not a learned affine grid
            continue
        bits, gs = q.spec.bits, q.spec.group_size
        x = codes(group(layer["weight"], gs).astype(mx.float32), q.scale, q.bias, bits)[3]
        out += ((x < -0.5) | (x > 2**bits - 1 + 0.5)).sum().item()
        total += x.size
    return out, total


if __name__ == "__main__":
    for run in sys.argv[1:]:
        n, total = outside(run)
        print(f"{run}: {100 * n / max(total, 1):.3f}% of {total} weights outside the grid")
