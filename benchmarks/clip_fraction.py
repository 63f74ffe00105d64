"""How many latent weights lie outside their learned grid: x = (w − b)/s outside [−½, n + ½],
the weights `quant/learned_affine.py` clips and gives no gradient. One line per run.

    python benchmarks/clip_fraction.py RUN_DIR:BITS [RUN_DIR:BITS ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mlx.core as mx  # noqa: E402

from mlx_qat.checkpoint import load_checkpoint  # noqa: E402
from mlx_qat.quant.affine import group  # noqa: E402
from mlx_qat.quant.learned_affine import codes  # noqa: E402


def outside(run: str, bits: int) -> tuple[int, int]:
    """(weights outside their grid, weights under a learned grid) in `run`'s latest checkpoint."""
    w = load_checkpoint(run, optimizer=False).weights
    out = total = 0
    for key in (k for k in w if k.endswith("quantizer.scale")):
        base = key[: -len("quantizer.scale")]
        weight, bias = w[base + "weight"], w[base + "quantizer.bias"]
        grouped = group(weight, weight.shape[-1] // w[key].shape[-1]).astype(mx.float32)
        x = codes(grouped, w[key], bias, bits)[3]  # the quantizer's own x = (w − b) / s
        out += ((x < -0.5) | (x > 2**bits - 1 + 0.5)).sum().item()
        total += weight.size
    return out, total


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        run, bits = arg.rsplit(":", 1)
        n, total = outside(run, int(bits))
        print(
            f"{run} {bits}-bit: {100 * n / max(total, 1):.3f}% of {total} weights outside the grid"
        )
