"""`mlx_qat.train`: train a model with an FP phase then QAT (`mlx_qat.train.train`).

    mlx_qat.train --config main --data data --out runs/main   # add --resume after a crash
    mlx.launch --backend ring -n 2 --python .venv/bin/python -- -m mlx_qat train --data data ...

One `--kebab-case` flag per `TrainConfig` field, in its group's `--help` section (`q_mode` is
`--mode`, as every verb spells it). Prints the phase plan, trains (and the FP twin with
`--fp-twin`), prints the FP / PTQ / QAT table; with several processes (data-parallel, README
"Training on several processes or Macs") only rank 0 prints them. Exit status: 0 done, 1 bad
input or I/O error, 2 usage, 3 the loss diverged (lower --lr, then continue with --resume
--reschedule), 4 another process of a distributed run died or hung (continue with --resume).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from ..train.config import FLAG_NAMES, TrainConfig, parse_count
from ..train.config import GROUPS as CONFIG_GROUPS
from ..train.defaults import SCRATCH, default_help
from .common import add_config, add_renamed, debugging, run_verb, verb_parser


def _flag_type(f, default) -> object:
    """argparse `type` for a TrainConfig field; None = a switch."""
    if isinstance(default, bool):
        return None
    if "type" in f.metadata:  # a field with its own parser (quant_overrides: GLOB=SPEC)
        return f.metadata["type"]
    if "int" in str(f.type):
        # counts of tokens read best as 3e6 or 3M; everything else is a plain int
        return parse_count if f.name.endswith("tokens") else int
    return float if "float" in str(f.type) else str


# The sections of `--help`, in order: the config's groups (`train.config.GROUPS`), key (field
# metadata "group") -> title.
GROUPS = {group.KEY: group.TITLE for group in CONFIG_GROUPS}
# What `plan_for_config` reads (`mlx_qat.plan` takes only these): the data's vocabulary, the
# model, the format of each layer (parameter bytes), the budget, the schedule, the batch shape.
PLAN_FIELDS = (
    "data", "vocab_size", "preset", "model_config", "model",
    "bits", "group_size", "q_mode", "embed_bits", "quant_overrides",
    "tokens", "qat_fraction", "auto_a", "auto_scale", "pipeline", "cooldown_shape",
    "cooldown_fraction", "warmup_tokens", "warmup_steps", "qat_warmup_fraction", "lr", "min_lr",
    "cooldown_mode", "batch_size", "seq_len", "grad_accum",
)  # fmt: skip


def flag_of(name: str) -> str:
    """The flag of TrainConfig field `name` (`--group-size`; `--mode` for q_mode, as every
    verb spells it: `FLAG_NAMES`, whose old flag `--q-mode` stays for one release)."""
    return "--" + FLAG_NAMES.get(name, name).replace("_", "-")


def add_train_arguments(
    parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None
) -> None:
    """One flag per TrainConfig field (`only` these when given), in the titled `GROUPS`, each
    with its choices and its default (`HelpFormatter`; the fields whose default depends on
    `--model` state both)."""
    groups = {key: parser.add_argument_group(title) for key, title in GROUPS.items()}
    order = list(GROUPS)
    for f in sorted(fields(TrainConfig), key=lambda f: order.index(f.metadata["group"])):
        if only is not None and f.name not in only:
            continue
        g = groups[f.metadata["group"]]
        default = f.default_factory() if callable(f.default_factory) else f.default
        help_text = f.metadata.get("help", "")
        if f.name in SCRATCH:
            help_text += " " + default_help(f.name)
        help_text = help_text.replace("%", "%%")
        typ = _flag_type(f, default)
        kw = {
            k: f.metadata[k] for k in ("nargs", "choices", "action", "metavar") if k in f.metadata
        }
        flag = flag_of(f.name)
        if typ is None:
            action = g.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                help=help_text,
            )  # fmt: skip
        else:
            # an "extend" flag starts from None: argparse extends its default in place, and a
            # mapping default (quant_overrides: {}) has no .extend (TrainConfig fills it)
            start = None if kw.get("action") in ("extend", "append") else default
            if "choices" not in kw:  # argparse shows the choices where no metavar is set
                kw = {"metavar": f.name.upper(), **kw}
            action = g.add_argument(
                flag, dest=f.name, type=typ, default=start, help=help_text, **kw
            )
        if flag != "--" + f.name.replace("_", "-"):
            add_renamed(g, "--" + f.name.replace("_", "-"), action)
    for group in groups.values():  # a section with no flag (plan's subset) is left out
        if not group._group_actions:  # noqa: SLF001
            parser._action_groups.remove(group)  # noqa: SLF001


def build_parser():
    """Every TrainConfig field as a flag, plus `--config`."""
    p = verb_parser("train", "Train a model with an FP phase then QAT (fake quantization) on MLX.")
    add_config(p)
    add_train_arguments(p)
    return p


def config_from(opts: dict) -> TrainConfig:
    """The TrainConfig of resolved options (the keys that are not TrainConfig fields dropped)."""
    names = {f.name for f in fields(TrainConfig)}
    where = f"--config {opts['config']}" if opts.get("config") else "command line"
    return TrainConfig.from_dict({k: v for k, v in opts.items() if k in names}, where=where)


def check_copied_run(opts: dict, out_given: bool) -> None:
    """Refuse `--config RUN/config.yaml` whose `out:` names another run directory than RUN
    (the run was copied or moved) unless `--out` says which one to use: otherwise a copy
    would silently resume, and overwrite, the original."""
    path = opts.get("config")
    if not path or out_given:
        return
    here = Path(path).resolve().parent
    if not ((here / "checkpoints").is_dir() or (here / "metrics.jsonl").is_file()):
        return  # a config file that does not live in a run directory
    out = Path(opts["out"])
    if out.resolve() != here:
        raise ValueError(
            f"--config {path}: is the config of the run in {here}, but its out: is {out} (was "
            f"the run copied or moved?). Pass --out {here} to continue this copy, or --out "
            f"{out} to continue the original"
        )


def _out_given(argv: list[str]) -> bool:
    parser = build_parser()
    parser.set_defaults(out=None)
    return parser.parse_known_args(argv)[0].out is not None


def _run(opts: dict, argv: list[str]) -> int:
    from ..train import TrainingDiverged, plan_for_config, train
    from ..train.dist import DistributedError, process_rank
    from ..train.twin import format_comparison
    from ..train.watchdog import EXIT_CODE

    check_copied_run(opts, _out_given(argv))
    cfg = config_from(opts)
    main = process_rank() == 0  # several processes (mlx.launch): rank 0 alone prints
    if main and not cfg.quiet:
        print(f"mlx_qat.train: {cfg.out}\n{plan_for_config(cfg).table()}", flush=True)
    try:
        result = train(cfg)
    except (TrainingDiverged, DistributedError) as e:
        if debugging(opts):
            raise
        print(f"mlx_qat.train: stopped: {e}", file=sys.stderr)
        return 3 if isinstance(e, TrainingDiverged) else EXIT_CODE
    if not main:
        return 0
    print(format_comparison(result))
    if result.get("plot"):
        print(f"plot: {result['plot']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `mlx_qat.train`; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    return run_verb("train", build_parser, lambda opts: _run(opts, args), argv)


def parse_args(argv: list[str]) -> TrainConfig:
    """The TrainConfig that `mlx_qat.train ARGV` would run (CLI > YAML > defaults)."""
    from .common import resolve

    return config_from(resolve(build_parser(), argv))
