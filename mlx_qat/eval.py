"""Evaluate a checkpoint: FP, QAT and PTQ validation loss and bits per byte (`mlx_qat.loss`).

    >>> from mlx_qat.eval import evaluate_checkpoint
    >>> ev = evaluate_checkpoint("runs/main")          # the run's latest checkpoint
    >>> ev["qat"]["loss"], ev["gap_recovered"]

Settings the call leaves out come from the run's `config.yaml` (data, batch shape, and
`final_eval_batches`: by default the whole validation split).
"""

from __future__ import annotations

from pathlib import Path

from .checkpoint import build_model, load_checkpoint
from .data.resolve import open_eval_data
from .loss import all_minmax, eval_triple
from .train.config import load_config


def evaluate_checkpoint(
    path: str | Path,
    data: str | None = None,
    eval_batches: int | None = None,
    batch_size: int | None = None,
    seq_len: int | None = None,
) -> dict:
    """FP / QAT / PTQ loss and bpb of a run's latest checkpoint or of one checkpoint dir.

    Args:
        path: a run directory (its latest checkpoint) or a checkpoint directory.
        data: prepared data dir (default: the one the checkpoint was trained on).
        eval_batches: validation batches (default: the run's final_eval_batches; 0 = all).
        batch_size, seq_len: the batch shape (default: the run's).

    Returns:
        `eval_triple`'s dict plus "checkpoint", "step", "phase", "tokens" and "minmax"
        (True when QAT and PTQ are the same grid, so the gap needs the FP twin).
    """
    ckpt = load_checkpoint(path, optimizer=False)
    run_dir = ckpt.path.parent.parent
    cfg = load_config(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else None
    data = data or ckpt.state.get("data", {}).get("shards") or (cfg and cfg.data)
    if not data:
        raise ValueError(f"{path}: no data recorded; pass --data DIR")
    seq = seq_len or (cfg.seq_len if cfg else 128)
    bs = batch_size or (cfg.batch_size if cfg else 16)
    nb = eval_batches if eval_batches is not None else (cfg.final_eval_batches if cfg else 0)
    batches, bpt = open_eval_data(data, bs, seq, nb or None)
    model = build_model(ckpt)
    ready = ckpt.qat.get("phase") == "qat"
    ev = eval_triple(model, batches, bpt, quantizers_ready=ready)
    tokens = getattr(batches, "num_tokens", None)
    return {
        "checkpoint": str(ckpt.path),
        "step": ckpt.step,
        "phase": ckpt.qat.get("phase"),
        "tokens": tokens,
        "minmax": all_minmax(model),
        **ev,
    }
