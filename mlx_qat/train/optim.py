"""AdamW with weight decay on matrices only, its state as flat arrays, and what it trains.

Three bias-corrected AdamW instances behind `optim.MultiOptimizer`, split by parameter path:

- quantizer parameters (under `.quantizer.`): no weight decay (it would shrink the grid) and the
  LR times `quantizer_lr_scale` (Adam moves every parameter by about the LR per step: a scale
  of ~1e-2 would jump by 100% per step at a pretraining LR of 1e-2);
- not decayed: norms and biases (1-D);
- decayed: float weights with ≥ 2 dimensions (linear weights, the tied embedding, whose decay
  keeps its range and so its grid tight, as GPT-2/nanoGPT do) at the LR × `weight_lr_scale`.

The LR is set from the plan before every step (`set_lr`): the schedule is a pure function of the
step. A 16-bit `--model` trains float32 masters unless `master_dtype` is "model"
(`float32_masters`): an update of 1e-5 to a bfloat16 weight of 0.02 would round away.

**Grid first** (`--grid-first-fraction F`, issue #28 item 2), with QAT from the first step and
`k = round(F · qat_steps)`: steps [0, k) train what `--train grid` trains (the grid and the
norms, every weight frozen: bit for bit a `--train grid` run's steps); from step k the weights
join at `--weight-lr-scale` × LR (a layer bias, 1-D, at LR). The grid's and the norms' moments
and step count carry over; the joining parameters start with zero moments, and the weight
matrices' group (which held nothing, though its step count advanced) restarts its step count
at 0: their bias correction is that of a fresh Adam started at step k. The trainer joins at the
top of step k, so a checkpoint saved at step s holds the weights' state exactly when s > k
(`joined`): a resumed run joins before loading it (`catch_up`). metrics.jsonl records the
boundary as `weights_join`, the result as `weights_join_step`.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_unflatten

from ..prepare import is_quantizer_param, train_only_grid

logger = logging.getLogger(__name__)

# the weight matrices' sub-optimizer in `build_optimizer` (quantizer, not decayed, decayed)
WEIGHTS_GROUP = 2


def is_decayed(path: str, param: mx.array) -> bool:
    """True for parameters that get weight decay (matrices that are not quantizer params)."""
    return param.ndim >= 2 and not is_quantizer_param(path)


def build_optimizer(model: nn.Module, config) -> optim.MultiOptimizer:
    """AdamW (decay on matrices) for `model`'s trainable parameters per a `TrainConfig`,
    state initialised."""

    def adamw(wd: float) -> optim.AdamW:
        return optim.AdamW(
            learning_rate=config.lr,
            betas=[config.beta1, config.beta2],
            eps=config.eps,
            weight_decay=wd,
            bias_correction=True,
        )

    opt = optim.MultiOptimizer(
        [adamw(0.0), adamw(0.0), adamw(config.weight_decay)],
        [lambda path, p: is_quantizer_param(path), lambda path, p: not is_decayed(path, p)],
    )
    opt.lr_scales = (float(config.quantizer_lr_scale), 1.0, float(config.weight_lr_scale))
    opt.init(model.trainable_parameters())
    return opt


def set_lr(opt: optim.Optimizer, lr: float) -> None:
    """Set the learning rate (a float32 array in the state) of every sub-optimizer, times
    its group's scale."""
    subs = getattr(opt, "optimizers", [opt])
    scales = getattr(opt, "lr_scales", (1.0,) * len(subs))
    for o, s in zip(subs, scales):
        o.learning_rate = mx.array(lr * s, dtype=mx.float32)


def optimizer_arrays(opt: optim.Optimizer) -> dict[str, mx.array]:
    """The optimizer state flattened to `{dotted.path: array}` (for safetensors)."""
    return dict(tree_flatten(opt.state))


def load_optimizer_arrays(opt: optim.Optimizer, arrays: dict[str, mx.array]) -> None:
    """Restore `optimizer_arrays` output into `opt`; ValueError naming the keys that differ."""
    have = set(optimizer_arrays(opt))
    got = set(arrays)
    if have != got:
        missing, extra = sorted(have - got)[:5], sorted(got - have)[:5]
        raise ValueError(
            f"optimizer state does not match the model: missing {missing}, unexpected {extra}"
        )
    opt.state = tree_unflatten(list(arrays.items()))
    # MultiOptimizer's setter leaves the children "uninitialized": they would re-init lazily
    # (keeping the loaded arrays); mark them initialised so compile sees a fixed state.
    for o in getattr(opt, "optimizers", [opt]):
        o._initialized = True


def freeze_for_grid(model: nn.Module, cfg, plan) -> list[str]:
    """`train=grid`, and grid first until the join: freeze every weight (the grid and the norms
    train; a plan with an FP phase is refused). Returns the paths frozen here."""
    if cfg.train != "grid" and not cfg.grid_first_fraction:
        return []
    what = "train=grid" if cfg.train == "grid" else "grid_first_fraction"
    if plan.fp_steps:
        raise ValueError(
            f"{what}: the weights are frozen, so there is no FP phase to train "
            f"(this plan has {plan.fp_steps} FP steps): give --qat-fraction 1"
        )
    before = {k for k, _ in tree_flatten(model.trainable_parameters())}
    trained = train_only_grid(model)
    logger.info("%s: %d trainable arrays (grid and norms)", what, len(trained))
    return sorted(before - set(trained))


def float32_masters(model: nn.Module, cfg, qcfg):
    """Set a `--model` in a 16-bit dtype to float32 (in place) unless `master_dtype` is
    "model"; returns `qcfg` with the model's own dtype as its `scale_dtype` when that is unset
    (the quantization scales keep the export's dtype, as mlx_lm.convert writes it)."""
    if not cfg.model or cfg.master_dtype != "float32":
        return qcfg
    own = {v.dtype for _, v in tree_flatten(model.parameters())}
    own = sorted(str(d).split(".")[-1] for d in own if mx.issubdtype(d, mx.floating))
    if own in ([], ["float32"]):
        return qcfg
    if qcfg.scale_dtype is None and len(own) == 1:
        qcfg = replace(qcfg, scale_dtype=own[0])
    model.set_dtype(mx.float32)
    mx.eval(model.parameters())
    logger.info("--model weights are %s: trained as float32 masters (--master-dtype model "
                "keeps them as they are)", "/".join(own))  # fmt: skip
    return qcfg


def join_step(cfg, plan) -> int | None:
    """The step before which the weights join (None without grid first)."""
    if not cfg.grid_first_fraction:
        return None
    return plan.fp_steps + round(cfg.grid_first_fraction * plan.qat_steps)


def joined(step: int, at: int | None) -> bool:
    """Whether a checkpoint saved at `step` holds the joined weights' optimizer state."""
    return at is not None and step > at


def join_weights(model: nn.Module, opt: optim.MultiOptimizer, held: list[str]) -> None:
    """Unfreeze `held` and give it zero moments, keeping every other parameter's state; the
    weight matrices' group restarts its step count."""
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
    """Trainer `t` about to load the state of `step`: join first when that state holds the
    weights', so the optimizer state fits."""
    if joined(step, t.join_at) and t.held:
        join_weights(t.model, t.optimizer, t.held)
        t.held = []
