"""`mlx_qat.plan`: the phase plan a training config would use, without training
(`mlx_qat.train.plan_for_config`).

    mlx_qat.plan --preset d4 --tokens 20e6 --bits 4         # N, bytes, S, auto f, steps, LR
    mlx_qat.plan --config main --json
    mlx_qat.plan --config main --save plans/main   # plan.json + config.yaml
    mlx_qat.plan --config main --law runs/sweep_tiny/fit/fit.json --memory 1M

Takes the flags of `mlx_qat.train` that the plan reads (`cli.train.PLAN_FIELDS`); its `--config`
may be a whole training config, whose other settings pass through unread (`--save DIR` writes
them to `DIR/config.yaml`, which `mlx_qat.train --config` trains exactly as planned).

`--law FIT.json` (from `mlx_qat.fit`) adds what the fitted law predicts for the config's model
and budget (`mlx_qat.fit.planning.law_plan`), and `--memory BYTES` the best bit width for that
parameter memory (`memory_plan`), at the config's token budget or at iso-FLOP (`--iso-flops C`).
A degenerate law, or a model more than 10x outside the fitted sizes, is warned about (also on
stderr); `--memory` whose widths' sizes lie that far outside is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..fileio import atomic_write_json, atomic_write_text
from .common import accept_in_yaml, add_common, verb_main, verb_parser
from .train import PLAN_FIELDS, add_train_arguments, config_from
from .train import build_parser as train_parser


def build_parser():
    """The flags of `mlx_qat.train` that planning reads, plus `--json`, `--save` and the
    fitted law's; `--config` also takes a whole training config."""
    p = verb_parser("plan", "Print the phase plan of a training config (nothing is trained).")
    add_common(p)
    add_train_arguments(p, only=PLAN_FIELDS)
    accept_in_yaml(p, train_parser())
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--save", metavar="DIR", help="write DIR/plan.json and DIR/config.yaml")
    law = p.add_argument_group("fitted law (mlx_qat.fit)")
    law.add_argument(
        "--law", metavar="FIT.json", help="predict with this fit: fractions, losses, token cost"
    )
    law.add_argument(
        "--memory",
        type=_bytes,
        metavar="BYTES",
        help="with --law: the best bit width for this parameter memory (1e6, 1M, 100KB)",
    )
    law.add_argument(
        "--iso-flops",
        type=float,
        metavar="C",
        help="with --memory: compare widths at compute C (D = C/(6N)), not at the config's D",
    )
    return p


def _bytes(text: str) -> float:
    from ..fit.planning import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def lr_line(plan) -> str:
    """The LR at the phase boundaries, one line."""
    bounds = sorted({0, max(plan.fp_steps - 1, 0), plan.fp_steps, plan.total_steps - 1})
    lrs = ", ".join(f"step {s}: {plan.lr_at(s):.3g}" for s in bounds if s < plan.total_steps)
    return f"  LR at the boundaries  {lrs}"


def load_law(path: str):
    """The `FitResult` of `--law PATH`; ValueError naming the file, what it holds and what was
    expected when it is not a fit.json of `mlx_qat.fit`."""
    from ..fit import FitResult

    what = "a fit.json written by mlx_qat.fit (a JSON object with schema, params, ...)"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"it holds a JSON {_json_type(data)}, not an object")
        if "params" in data and not isinstance(data["params"], dict):
            raise ValueError(f"its params is a JSON {_json_type(data['params'])}, not an object")
        return FitResult.from_dict(data)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(
            f"--law {path}: cannot read it as {what} ({e}); pass the fit.json that "
            "`mlx_qat.fit RESULTS.jsonl` writes"
        ) from e


def _json_type(x) -> str:
    names = {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if x is None else names.get(type(x), type(x).__name__)


def law_section(opts: dict, fitted, cfg, plan) -> tuple[dict, str]:
    """What the fitted law (`--law`, loaded as `fitted`) says about this plan, as JSON and
    as text."""
    from ..fit.planning import check_memory_sizes, law_plan, law_warnings, memory_plan

    a_fit = (fitted.a or {}).get("vertex")
    D = plan.total_steps * plan.tokens_per_step  # the D a sweep row of this config records
    req = plan.requested if plan.requested == "auto" else f"{float(plan.requested):g}"
    lp = law_plan(
        fitted.params, plan.n_params, D, cfg.bits, a_fit, {f"this config ({req})": plan.fraction}
    )
    warnings = law_warnings(fitted, plan.n_params)
    data = {"file": str(opts["law"]), **lp.to_dict(), "warnings": warnings}
    text = [f"predicted by the fitted law {opts['law']}:"]
    text += [f"  WARNING: {w}" for w in warnings] + [lp.table()]
    if abs(lp.S - plan.tokens_per_byte) > 1e-9 * lp.S:
        text.append(
            f"  (the law's S counts N·B/8 bytes; the trainer's S = {plan.tokens_per_byte:,.2f} "
            "counts the exact bytes)"
        )
    if opts.get("memory") is not None:
        flops = opts.get("iso_flops")
        mp = memory_plan(fitted.params, opts["memory"], D=None if flops else D, flops=flops)
        check_memory_sizes(fitted, mp, "--memory")
        data["memory"] = mp.to_dict()
        text += ["predicted best bit width for the memory budget:", mp.table()]
    return data, "\n".join(text)


def _run(opts: dict) -> int:
    from ..train import plan_for_config

    if opts.get("law") is None and (opts.get("memory") or opts.get("iso_flops")):
        raise ValueError("--memory and --iso-flops need a fitted law: add --law FIT.json")
    if opts.get("iso_flops") is not None and opts.get("memory") is None:
        raise ValueError("--iso-flops compares bit widths under --memory BYTES: give both")
    if opts.get("iso_flops") is not None and not opts["iso_flops"] > 0:
        raise ValueError(f"--iso-flops {opts['iso_flops']}: must be > 0")
    fitted = load_law(opts["law"]) if opts.get("law") else None
    cfg = config_from(opts)
    plan = plan_for_config(cfg)
    law, law_text = law_section(opts, fitted, cfg, plan) if fitted else (None, "")
    for w in (law or {}).get("warnings", ()):  # also on stderr, where --json leaves it visible
        print(f"mlx_qat.plan: warning: {w}", file=sys.stderr)
    if opts.get("save"):
        out = Path(opts["save"])
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "plan.json", plan.to_dict())
        atomic_write_text(out / "config.yaml", cfg.to_yaml())
        if law is not None:
            atomic_write_json(out / "law_plan.json", law)
    if opts.get("json"):
        print(json.dumps(plan.to_dict() | ({"law": law} if law else {}), indent=2))
    else:
        print(plan.table())
        print(lr_line(plan))
        if law_text:
            print(law_text)
    return 0


main = verb_main("plan", build_parser, _run)
