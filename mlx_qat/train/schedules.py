"""Learning-rate schedules of the two pipelines, as pure functions of the optimizer step.

Notation: `W` warmup steps, `T` total steps, `T_fp` / `T_qat` steps per phase, `η` the peak LR,
`η_min` the floor. A warmup ramps linearly from 0: `η·(j+1)/n` at its j-th step. A decay over
`n` steps starting at step `a` gives `η_min + (η − η_min)·g(t)` with `t = (s − a)/n ∈ [0, 1)`
(its first step is still at η; η_min is reached just after its last step) and

    linear  g(t) = 1 − t        cosine  g(t) = (1 + cos πt)/2        1-sqrt  g(t) = 1 − √t

**fused** (paper 000 §6.1): FP warmup → constant η; the QAT phase starts at η, holds, and
decays over its last `cooldown_steps = min(T_qat, round(c·T))` steps. Without a QAT phase
(f = 0, PTQ only) the FP phase ends with the `round(c·T)`-step decay instead. With the
cooldown mode **fixed** the decay always covers the last `round(c·T)` steps whatever f (the
f = 0 run's LR sequence): f then moves only the switch. The classic pipeline ignores the mode.

**classic**: FP warmup → constant → decay over the last `round(c·T_fp)` FP steps; the QAT
phase re-warms up over `max(1, round(r·T_qat))` steps back to η (r = `qat_warmup_fraction`),
then decays over the rest of the QAT phase. With f = 1 the re-warmup is at least `W` long.

Where a warmup and a decay overlap (very short runs) the smaller LR wins.
"""

from __future__ import annotations

import math

SHAPES = ("linear", "cosine", "1-sqrt")
PIPELINES = ("fused", "classic")
COOLDOWN_MODES = ("fused", "fixed")


def decay_factor(shape: str, t: float) -> float:
    """g(t) for t in [0, 1]: 1 at t = 0, 0 at t = 1."""
    t = min(max(t, 0.0), 1.0)
    if shape == "linear":
        return 1.0 - t
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if shape == "1-sqrt":
        return 1.0 - math.sqrt(t)
    raise ValueError(f"cooldown shape {shape!r}: choose one of {', '.join(SHAPES)}")


def _warm(j: int, n: int) -> float:
    return 1.0 if n <= 0 or j >= n else (j + 1) / n


def _decay(s: int, start: int, n: int, shape: str) -> float:
    if n <= 0 or s < start:
        return 1.0
    return decay_factor(shape, (s - start) / n)


def factors(plan, step: int) -> tuple[float, float]:
    """(warmup ramp, decay factor) at `step`: each 1 outside its window."""
    s, total = int(step), plan.total_steps
    if plan.pipeline == "fused" or plan.qat_steps == 0:
        cd = plan.cooldown_steps
        return _warm(s, plan.warmup_steps), _decay(s, total - cd, cd, plan.shape)
    # classic, with a QAT phase
    if s < plan.fp_steps:
        cd = plan.cooldown_steps
        return _warm(s, plan.warmup_steps), _decay(s, plan.fp_steps - cd, cd, plan.shape)
    j, qw = s - plan.fp_steps, plan.qat_warmup_steps
    return _warm(j, qw), _decay(j, qw, plan.qat_steps - qw, plan.shape)


def lr_at(plan, step: int) -> float:
    """The learning rate of optimizer step `step` (0-based) under `plan`.

    `min(η·warmup(s), η_min + (η − η_min)·g(s))`: warmups ramp from 0, decays end at η_min.
    Example (fused, 1-sqrt, 100 steps, f = 0.3, c = 0.2): steps 0..W-1 ramp, W..80 at η,
    80..99 decay, lr(90) = η_min + (η − η_min)(1 − √0.5).
    """
    warm, decay = factors(plan, step)
    return min(plan.lr * warm, plan.min_lr + (plan.lr - plan.min_lr) * decay)


def lr_curve(plan) -> list[float]:
    """`lr_at` for every step of the plan."""
    return [lr_at(plan, s) for s in range(plan.total_steps)]
