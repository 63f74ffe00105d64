"""The training step: loss, gradients, clipping and the AdamW update, compiled.

A step takes one or more micro-batches ((B, T+1) int32 each, or `(tokens, weights)` pairs whose
(B, T) weights mask the loss: `--mask-prompt`; several with `--grad-accum`). A compiled
`loss+grad` runs per micro-batch and is evaluated before the next (one micro-batch's
activations alive), the gradients are averaged, and a compiled `clip+update` applies them.

Why two compiled calls even for one micro-batch: as one graph, MLX keeps the backward's
activations and the update's new weights and Adam moments alive together; evaluating the
gradients first frees the activations before the update allocates. On a 3-bit KD fine-tune of
SmolLM2-135M this cut the peak from 6.66 to 5.58 GB (`benchmarks/results/memory_smollm2_v3.md`).

With a distributed `group` (`dist.py`) the gradients are averaged over the processes before
clipping, and the loss returned is their mean. The collectives run on the CPU stream: on a
Mac's GPU stream, a process that waits more than ~5 s for a slower one is killed by Metal's
command-buffer watchdog (ml-explore/mlx-examples#1185).

A compiled function captures Python attributes at trace time (each QAT layer's `fake_quant`),
so the trainer builds a new step after the switch and after any change to the optimizer's
state objects.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_map, tree_reduce


def masked_mean(per_token: mx.array, weights: mx.array | None) -> mx.array:
    """Σ wᵢ·lᵢ / Σ wᵢ: the mean over the tokens that carry loss (`weights` 1, the prompt 0);
    the plain mean without `weights`. A batch of prompt tokens only has loss 0 (no gradient)."""
    if weights is None:
        return per_token.mean()
    w = weights.astype(mx.float32)
    return (per_token * w).sum() / mx.maximum(w.sum(), 1.0)


def loss_fn(
    model: nn.Module, inputs: mx.array, targets: mx.array, weights: mx.array | None = None
) -> mx.array:
    """Mean next-token cross-entropy (nats), computed in float32; with `weights` (B, T), the
    mean over the targets of weight 1 (`masked_mean`: `--mask-prompt`)."""
    logits = model(inputs).astype(mx.float32)
    if weights is None:
        return nn.losses.cross_entropy(logits, targets, reduction="mean")
    return masked_mean(nn.losses.cross_entropy(logits, targets, reduction="none"), weights)


def _loss_args(batch) -> tuple:
    """(inputs, targets) of a (B, T+1) batch, plus the weights of a `(tokens, weights)` pair."""
    if isinstance(batch, tuple | list):
        tokens, weights = batch
        return tokens[:, :-1], tokens[:, 1:], weights
    return batch[:, :-1], batch[:, 1:]


def global_norm(grads) -> mx.array:
    return mx.sqrt(
        tree_reduce(lambda acc, g: acc + g.astype(mx.float32).square().sum(), grads, 0.0)
    )


def _clip(grads, grad_clip: float):
    if grad_clip > 0:
        return optim.clip_grad_norm(grads, grad_clip)
    return grads, global_norm(grads)


def make_step(
    model: nn.Module,
    optimizer: optim.Optimizer,
    grad_clip: float = 1.0,
    compile: bool = True,
    group: mx.distributed.Group | None = None,
    update=None,
    loss: Callable[[nn.Module, mx.array, mx.array], mx.array] | None = None,
) -> Callable[[list[mx.array]], tuple[mx.array, mx.array]]:
    """Build `step(batches) -> (mean loss, pre-clip gradient norm)`; it updates in place.

    Args:
        grad_clip: clip the global gradient norm to this (0: no clipping).
        group: average gradients and loss over this distributed group (None: one process).
        update: `update(model, optimizer, grads)` instead of `optimizer.update(model, grads)`,
            once per step; its `update.state` is compiled in (`trs.QATUpdate`).
        loss: `loss(model, inputs, targets, weights=None) -> mean loss` instead of `loss_fn`
            (`distill.make_loss`; a teacher it calls is captured as constants).
    """
    loss_and_grad = nn.value_and_grad(model, loss or loss_fn)
    state = [model.state, optimizer.state, mx.random.state]
    if update is not None:
        state.append(update.state)
    else:
        update = lambda model, optimizer, grads: optimizer.update(model, grads)  # noqa: E731
    size = group.size() if group is not None else 1

    def average(grads):
        if size == 1:
            return grads
        return nn.average_gradients(grads, group=group, communication_stream=mx.cpu)

    def mean_loss(loss):
        return mx.distributed.all_sum(loss, group=group, stream=mx.cpu) / size if size > 1 else loss

    def micro(batch):
        return loss_and_grad(model, *_loss_args(batch))

    def apply(grads):
        grads, norm = _clip(average(grads), grad_clip)
        update(model, optimizer, grads)
        return norm

    if compile:
        micro_state = [model.state, mx.random.state]
        micro = mx.compile(micro, inputs=micro_state, outputs=micro_state)
        apply = mx.compile(apply, inputs=state, outputs=state)

    def step(batches):
        total_loss, acc = None, None
        for batch in batches:
            loss, grads = micro(batch)
            acc = grads if acc is None else tree_map(mx.add, acc, grads)
            total_loss = loss if total_loss is None else total_loss + loss
            mx.eval(acc, total_loss)
        n = len(batches)
        if n > 1:
            acc = tree_map(lambda g: g / n, acc)
        norm = apply(acc)
        return mean_loss(total_loss / n), norm

    return step
