"""Fake-quant forward dispatch: fused GPU kernels where available, pure MLX elsewhere.

Placeholder dispatch; the fused Metal/CUDA kernels and the tuned CPU path live in this package.
"""

from __future__ import annotations

import mlx.core as mx


def fake_quant_forward(w: mx.array, spec) -> mx.array:
    """Forward of the min/max fake quantizer for `spec` on the best available backend."""
    from ..quant.fake_quant import reference_fake_quant

    return reference_fake_quant(w, spec)
