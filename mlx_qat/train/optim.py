"""AdamW with weight decay on matrices only, and its state as flat arrays.

Three AdamW instances behind `optim.MultiOptimizer`, split by parameter path:

- quantizer parameters (LSQ `alpha`, learned affine `scale`/`bias`, under `.quantizer.`): no
  weight decay (it would shrink the grid itself) and the LR times `quantizer_lr_scale`.
  Adam moves every parameter by about the LR per step whatever its size; a step size or
  scale of ~1e-2 would jump by 100% per step at a pretraining LR of 1e-2.
- not decayed: norms and biases (1-D).
- decayed: float weights with ≥ 2 dimensions — every linear weight and the (tied) embedding
  table — at the LR times `weight_lr_scale` (1, but for fine-tunes that move the weights
  slower than the grid and the norms). The tied table is also the output projection, and
  decaying it keeps its range (and so its 4-bit grid) tight, as GPT-2/nanoGPT do.

Both use bias-corrected moments (β1, β2, ε from the config). The learning rate is set from
the plan before every step (`set_lr`), so the schedule is a pure function of the step.

A `--model` in a 16-bit dtype trains float32 master weights (and so float32 moments) unless
`master_dtype` is "model" (`float32_masters`): an update of 1e-5 to a bfloat16 weight of 0.02
would round away.
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


def is_decayed(path: str, param: mx.array) -> bool:
    """True for parameters that get weight decay (matrices that are not quantizer params)."""
    return param.ndim >= 2 and not is_quantizer_param(path)


def build_optimizer(model: nn.Module, config) -> optim.MultiOptimizer:
    """AdamW (decay on matrices) for `model`'s trainable parameters, state initialised.

    Args:
        model: the prepared model.
        config: a `TrainConfig` (lr, beta1, beta2, eps, weight_decay, quantizer_lr_scale,
            weight_lr_scale).
    """

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
    """Restore `optimizer_arrays` output into `opt` (which must have the same structure).

    Raises:
        ValueError: naming the missing or unexpected keys.
    """
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
    """`train=grid`, and the first steps of `grid_first_fraction` (`grid_first.py`): freeze
    every weight (the quantization grid and the norms train), which leaves no FP phase to
    train: refused with one. Returns the paths frozen here (empty when nothing is)."""
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
