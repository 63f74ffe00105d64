"""Grid first, then the weights (`--grid-first-fraction F`, issue #28 item 2): start from the
grid-only optimum and let the weights add to it.

With QAT from the first step and `k = round(F · qat_steps)`:

    steps [0, k)      what `--train grid` trains: the quantization grid and the norms, every
                      weight frozen (DWQ's parameter set). Same parameters, optimizer and
                      compiled step, so these steps are a `--train grid` run's bit for bit.
    steps [k, total)  what `--train all` trains: the weights join, at `--weight-lr-scale` × LR
                      (their group's LR), and a layer's bias (1-D, where a model has one) at LR.

At the boundary the grid's and the norms' AdamW moments and step count carry over unchanged; the
joining parameters start with zero moments. The weight matrices' group held nothing before the
boundary (its step count still advanced with every update), so its step count restarts at 0:
the weights' bias correction is that of a fresh Adam started at step k. A layer bias joins the
norms' group and its running step count.

Resume: the trainer joins at the top of step k, before running it, so a checkpoint saved at
step s holds the weights' optimizer state exactly when s > k (`joined`): a resumed run joins
before loading the optimizer state of such a checkpoint and continues bit for bit. The boundary
is in metrics.jsonl as `{"kind": "weights_join", "step": k, ...}` and in the result as
`weights_join_step`.
"""

from __future__ import annotations

import logging

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim

logger = logging.getLogger(__name__)

# the weight matrices' sub-optimizer in `optim.build_optimizer` (quantizer, not decayed, decayed)
WEIGHTS_GROUP = 2


def join_step(cfg, plan) -> int | None:
    """The step before which the weights join (`fp_steps + round(F · qat_steps)`), None
    without grid-first (`grid_first_fraction` 0)."""
    if not cfg.grid_first_fraction:
        return None
    return plan.fp_steps + round(cfg.grid_first_fraction * plan.qat_steps)


def joined(step: int, at: int | None) -> bool:
    """Whether a checkpoint saved at `step` holds the joined weights' optimizer state."""
    return at is not None and step > at


def join_weights(model: nn.Module, opt: optim.MultiOptimizer, held: list[str]) -> None:
    """Unfreeze the parameters `held` (the grid-first steps froze them) and give them optimizer
    state (zero moments), keeping every other parameter's; the weight matrices' group restarts
    its step count (see the module header)."""
    by_module: dict[str, list[str]] = {}
    for path in held:
        owner, _, key = path.rpartition(".")
        by_module.setdefault(owner, []).append(key)
    for path, m in model.named_modules():
        if path in by_module:
            m.unfreeze(recurse=False, keys=by_module[path])
    opt.init(model.trainable_parameters())  # adds the missing entries, keeps the others
    opt.optimizers[WEIGHTS_GROUP].state["step"] = mx.array(0, dtype=mx.uint64)
    mx.eval(opt.state)
    logger.info("grid first: %d weight arrays join the training", len(held))


def catch_up(t, step: int) -> None:
    """Trainer `t` about to load a checkpoint saved at `step` (or rank 0's state at `step`):
    join the weights first when that state holds them, so the optimizer state fits."""
    if joined(step, t.join_at) and t.held:
        join_weights(t.model, t.optimizer, t.held)
        t.held = []
