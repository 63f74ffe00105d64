"""Trunk sharing: runs that share an FP prefix train it once.

Runs with the same model, data, seed, token budget, bits and shared settings follow the same
learning-rate schedule (warmup, then the constant peak) up to a *branch step* b, which depends
on the run's pipeline and QAT fraction (T steps in all, T_fp before the switch, c the cooldown
fraction):

    fused, f > 0      b = T_fp                     (the QAT phase starts at the peak LR)
    fused, f = 0      b = T − round(c·T)           (the pure-FP run's final decay starts)
    fixed cooldown    b = T for f = 0               (`cooldown_mode: fixed`: every fused run
                                                    has the f = 0 run's LR, decay included)
    classic, f > 0    b = T_fp − round(c·T_fp)     (its FP cooldown starts)
    f = 1             b = 0                        (QAT from scratch: nothing to share)

The member with the largest b is the **trunk**: an ordinary run that also saves a checkpoint at
every other member's b. The others branch from it at their own b (`TrainConfig.branch_from`;
the trainer checks that the schedules agree there) and train only their T − b steps. With the
fixed cooldown the pure-FP run is the trunk, and a fused run whose switch lies inside the
cooldown branches there, mid-decay. A float twin (`fp_twins`) trains from its run's own switch
checkpoint: its QAT steps again, no FP step (`Member.twin_tokens`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace

from ..checkpoint import CHECKPOINTS, step_dir_name
from ..train.config import TrainConfig
from ..train.phase_plan import PhasePlan, plan_for_config
from .grid import Point, Sweep

# Settings that may differ between the members of one trunk.
_PER_MEMBER = ("out", "qat_fraction", "pipeline", "resume", "branch_from", "save_steps")


def branch_step(plan: PhasePlan) -> int:
    """The last step up to which `plan`'s LR is the shared warmup-then-constant prefix."""
    if plan.qat_steps == plan.total_steps:
        return 0
    if plan.qat_steps == 0:
        if plan.cooldown_mode == "fixed":  # the fused runs of its trunk share its decay too
            return plan.total_steps
        return plan.total_steps - plan.cooldown_steps
    if plan.pipeline == "fused":
        return plan.fp_steps
    return plan.fp_steps - plan.cooldown_steps


def trunk_key(config: TrainConfig) -> str:
    """What members of one trunk share: every setting but the per-member ones."""
    d = {k: v for k, v in config.to_dict().items() if k not in _PER_MEMBER}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass
class Member:
    """One run of a trunk: its grid point, config, plan and branch step."""

    point: Point
    config: TrainConfig
    plan: PhasePlan
    branch: int

    @property
    def tokens(self) -> int:
        return self.plan.total_steps * self.plan.tokens_per_step

    @property
    def twin_tokens(self) -> int:
        """Tokens of its float twin: its QAT phase again (`train.twin`), when it has one."""
        p = self.plan
        return p.qat_tokens if self.config.fp_twin and 0 < p.qat_steps < p.total_steps else 0


@dataclass
class Trunk:
    """Members sharing one FP prefix; `members[0]` is the trunk run itself."""

    key: str
    members: list[Member] = field(default_factory=list)

    @property
    def root(self) -> Member:
        return self.members[0]

    @property
    def save_steps(self) -> list[int]:
        """The checkpoints the trunk run must save for its branches."""
        return sorted({m.branch for m in self.members[1:] if m.branch > 0})

    def tokens_trained(self) -> int:
        """Tokens this trunk costs: the root, each branch after its branch point, every twin."""
        tps = self.root.plan.tokens_per_step
        rest = sum(m.tokens - (m.branch * tps if m.branch > 0 else 0) for m in self.members[1:])
        return self.root.tokens + rest + sum(m.twin_tokens for m in self.members)

    def tokens_independent(self) -> int:
        """Tokens the same runs cost trained one by one (twins as in a trunk)."""
        return sum(m.tokens + m.twin_tokens for m in self.members)

    def configs(self) -> list[TrainConfig]:
        """Each member's final TrainConfig: the root saves the branch points, the others branch."""
        root = replace(self.root.config, save_steps=self.save_steps)
        out = [root]
        for m in self.members[1:]:
            if m.branch > 0:
                src = f"{root.out}/{CHECKPOINTS}/{step_dir_name(m.branch)}"
                out.append(replace(m.config, branch_from=src))
            else:
                out.append(m.config)
        return out


def _fp_run(p: Point) -> tuple:  # what a pure-FP run depends on: not its bits
    return p.model, p.tokens, p.seed


def plan_trunks(sweep: Sweep) -> list[Trunk]:
    """Group the sweep's runs into trunks, adding the FP anchor (f = 0) when asked: one per
    model, budget and seed, in the trunk of the first bit width the grid gives there (an FP
    run trains no grid, so one per bit width would train, and count, the same run twice)."""
    points = list(sweep.points)
    if sweep.fp_anchor:
        have = {_fp_run(p) for p in points if p.fraction == 0 and p.pipeline == "fused"}
        for p in sweep.points:
            if _fp_run(p) not in have:
                have.add(_fp_run(p))
                points.append(replace(p, fraction=0.0, pipeline="fused", groups=("fp_anchor",)))
    trunks: dict[str, Trunk] = {}
    for p in points:
        cfg = sweep.config(p)
        plan = plan_for_config(cfg)
        trunks.setdefault(trunk_key(cfg), Trunk(trunk_key(cfg))).members.append(
            Member(p, cfg, plan, branch_step(plan))
        )
    for t in trunks.values():
        # The root: the latest branch point; among equals a fused run, then the smaller f.
        t.members.sort(
            key=lambda m: (-m.branch, m.point.pipeline != "fused", m.plan.fraction, m.point.name)
        )
    return list(trunks.values())
