"""A run's batches: the training stream, the periodic and final validation batches, and the
held-out test batches (`open_batches`).

The periodic evaluations read the same `eval_batches` validation batches each time; the final
one a larger sample (`final_eval_batches`, by default the whole split: the PTQ gap of a small
model is a few hundredths of a nat, so 16 batches leave a few % of noise in it), then the same
on the test split, reported and never used for a choice. Data prepared before the test split
existed has none (`final_test` None; said, not fatal).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..data.batches import TokenBatches, eval_batches
from ..data.resolve import check_split, train_loss_mask

logger = logging.getLogger(__name__)


@dataclass
class RunBatches:
    """What `open_batches` opens; bytes per token turn a loss into bits per byte."""

    train: TokenBatches
    val: list
    final_val: Any
    bytes_per_token: float
    final_test: Any = None
    test_bytes_per_token: float | None = None


def open_batches(cfg, bundle) -> RunBatches:
    """The batches of a run of `cfg` on the prepared data `bundle` (with `--mask-prompt`, the
    training batches carry the prompt mask: prompts carry no loss)."""
    b, final = bundle, cfg.final_eval_batches or None
    mask = train_loss_mask(b, cfg.mask_prompt)
    out = RunBatches(
        TokenBatches(b.train, cfg.batch_size, cfg.seq_len, cfg.seed, mask),
        list(eval_batches(b.val, cfg.batch_size, cfg.seq_len, cfg.eval_batches)),
        eval_batches(b.val, cfg.batch_size, cfg.seq_len, final),
        float(b.bytes_per_token["val"]),
    )
    try:
        check_split(b, "test", cfg.seq_len)
    except ValueError as e:  # no test split, or one too small for a window
        logger.warning("final evaluation on validation only: %s", e)
        return out
    out.final_test = eval_batches(b.test, cfg.batch_size, cfg.seq_len, final)
    out.test_bytes_per_token = float(b.bytes_per_token["test"])
    return out
