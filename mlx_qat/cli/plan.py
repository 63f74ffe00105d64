"""`mlx_qat.plan`: the phase plan a training config would use, without training
(`mlx_qat.train.plan_for_config`).

    mlx_qat.plan --preset d4 --tokens 20e6 --bits 4         # N, bytes, S, auto f, steps, LR
    mlx_qat.plan --config configs/main.yaml --json
    mlx_qat.plan --config configs/main.yaml --save plans/main   # plan.json + config.yaml

Takes every flag of `mlx_qat.train`. With `--save DIR` it writes the plan to `DIR/plan.json`
and the resolved training config to `DIR/config.yaml` (`mlx_qat.train --config DIR/config.yaml`
then trains exactly this plan).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..fileio import atomic_write_json, atomic_write_text
from .common import run_verb
from .train import build_parser as train_parser
from .train import config_from


def build_parser():
    """The flags of `mlx_qat.train`, plus `--json` and `--save`."""
    p = train_parser(
        "mlx_qat.plan", "Print the phase plan of a training config (nothing is trained)."
    )
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--save", metavar="DIR", help="write DIR/plan.json and DIR/config.yaml")
    return p


def lr_line(plan) -> str:
    """The LR at the phase boundaries, one line."""
    bounds = sorted({0, max(plan.fp_steps - 1, 0), plan.fp_steps, plan.total_steps - 1})
    lrs = ", ".join(f"step {s}: {plan.lr_at(s):.3g}" for s in bounds if s < plan.total_steps)
    return f"  LR at the boundaries  {lrs}"


def _run(opts: dict) -> int:
    from ..train import plan_for_config

    cfg = config_from(opts)
    plan = plan_for_config(cfg)
    if opts.get("save"):
        out = Path(opts["save"])
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "plan.json", plan.to_dict())
        atomic_write_text(out / "config.yaml", cfg.to_yaml())
    if opts.get("json"):
        print(json.dumps(plan.to_dict(), indent=2))
    else:
        print(plan.table())
        print(lr_line(plan))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `mlx_qat.plan`; returns the exit status."""
    return run_verb("plan", build_parser, _run, argv)
