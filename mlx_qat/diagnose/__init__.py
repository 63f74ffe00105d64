"""Loss-basin diagnostics: will round-to-nearest PTQ at a format work, or is QAT needed?

    >>> from mlx_qat.diagnose import diagnose
    >>> d = diagnose("runs/main", bits=2)            # the run's latest checkpoint, 2-bit weights
    >>> d["verdict"]["label"], d["scan"]["kappa_hat"], d["gap"]

Paper B (Li, Ma, Cui, arXiv 2606.09012) explains PTQ failure and QAT recovery with a basin
around the float weights: PTQ fails when the grid is comparable to the basin's width and the
round-to-nearest point lands outside it; QAT's gradients, taken at the quantized weights, point
back in. Every definition below is a **reconstruction** (the paper's measurements were not
available; `shared/docs/research/papers001_002_trs_geometry.md`, §2.4–§2.7), with w the float
checkpoint, L the mean validation loss on a few fixed batches, and Q(w) round-to-nearest at the
target format on the project's own grid (`MinMaxQuantizer`, bit-identical to `mx.quantize`):

- **Line scan (D1)**: φ(α) = L(w + α·(Q(w) − w)) for α in [0, 1.5] (13 points); the **PTQ
  gap** φ(1) − φ(0). The **basin edge** α* is the first α where φ(α) − φ(0) exceeds the level
  ε (linear interpolation; beyond the scan, quadratic extrapolation from its last point), and
  **κ̂ = 1/α***: the rounding error in units of the basin's width along it (κ̂ > 1: the PTQ
  point is outside). ε = max(0.01 nats (+1% perplexity), 2 standard errors of the PTQ gap).
- **Random directions (D2)**: the same scan along random directions whose norm in every group
  equals the rounding error's there; the **random radius** is the basin edge of the mean over
  draws, in units of the rounding error (Chen et al.'s "most-case" basin, arXiv 2505.17646).
  Radius ≫ 1 while κ̂ > 1: rounding picked a bad direction.
- **Stochastic rounding (D3)**: the best of a few unbiased stochastic roundings onto the same
  grid against round-to-nearest: do lower-loss grid points exist nearby?
- **Attribution**: each quantized layer (or block) rounded alone: its gap, α*, κ̂; those with
  κ̂ ≥ 1 re-checked at 8 bits (`verdict`'s rule 2).
- **Other formats**: the PTQ gap at one and two bit widths up, half the group size, and both
  (every layer moved alike): what "change the format" chooses from.
- **Verdict**: "PTQ is fine" / "QAT needed" / "change the format" (rules in `verdict.py`,
  calibrated on the share of the gap QAT then recovered).

Modules: measures.py (α*, κ̂), probe.py (moving the weights), scan.py (`diagnose_model`),
verdict.py, source.py (loading), report.py (table and plot); CLI: `mlx_qat.cli.diagnose`.
"""

from __future__ import annotations

from pathlib import Path

from ..eval import check_eval_memory
from .scan import ATTRIBUTION, DiagnoseSettings, diagnose_model
from .source import load_source, model_config, open_batches, target_config, target_layers
from .verdict import CHANGE_FORMAT, PTQ_FINE, QAT_NEEDED

__all__ = [
    "ATTRIBUTION",
    "CHANGE_FORMAT",
    "DiagnoseSettings",
    "PTQ_FINE",
    "QAT_NEEDED",
    "diagnose",
    "diagnose_model",
    "target_config",
]


def diagnose(
    path: str | Path,
    data: str | None = None,
    bits: int | None = None,
    group_size: int | None = None,
    mode: str | None = None,
    embed_bits: int | None = None,
    eval_batches: int = 4,
    batch_size: int | None = None,
    seq_len: int | None = None,
    settings: DiagnoseSettings | None = None,
    revision: str | None = None,
) -> dict:
    """Diagnose PTQ of a float model at a target format (definitions in the module header).

    Args:
        path: a run directory (its latest checkpoint), a checkpoint directory, or a float
            mlx-lm model directory or Hugging Face repo id (at `revision`).
        data: prepared data dir (default: the checkpoint's; required for an mlx-lm model).
        bits, group_size, mode, embed_bits: the target format (`target_config`; default: the
            checkpoint's own, for an mlx-lm model affine 4-bit g64; embeddings max(bits, 4)).
        eval_batches: fixed validation batches every point is evaluated on (0: all).
        batch_size, seq_len: the batch shape (default: the run's; else 8 × 256).

    Returns `diagnose_model`'s dict plus "source", "format", "covered" (layer → format),
    "skipped" and "settings".
    """
    if eval_batches is None or eval_batches < 0:
        raise ValueError(f"--eval-batches {eval_batches}: must be >= 0")
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len)):
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} {value}: must be >= 1")
    settings = settings or DiagnoseSettings()
    src = load_source(path, bits, group_size, mode, embed_bits, revision)
    bundle, batches, bpt = open_batches(src, data, eval_batches, batch_size, seq_len)
    layers, skipped = target_layers(src)
    # the model, its rounded copy and the point being evaluated (Probe) per covered layer
    rounded = 2 * sum(layer["weight"].nbytes for layer, _ in layers.values())
    check_eval_memory(model_config(src.model), batches, src.model, extra_bytes=rounded)
    cfg = src.config
    source = dict(path=str(src.path), kind=src.kind, step=src.step, phase=src.phase)
    tokens = getattr(batches, "num_tokens", None)
    source.update(data=str(bundle.path), batches=len(batches), tokens=tokens)
    fmt = {"weights": str(cfg.weights), "embeddings": str(cfg.embedding_spec)}
    out = {
        "source": source,
        "format": {**fmt, "scale_dtype": cfg.scale_dtype},
        "covered": {p: str(spec) for p, (_, spec) in layers.items()},
        "skipped": skipped,
        "settings": settings.to_dict(),
    }
    out.update(diagnose_model(src.model, batches, bpt, layers, settings, cfg.mx_scale_dtype))
    return out
