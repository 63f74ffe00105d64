"""Console entry points: `mlx_qat.data`, `.train`, `.convert`, `.eval`, `.plan`.

Each `*_main(argv=None)` returns an exit status. Called without `argv` (as a console script),
it first re-executes the process with Debian's OpenBLAS preloaded on Linux
(`mlx_qat.blas.reexec_with_openblas`; opt out with `MLX_QAT_NO_OPENBLAS=1`), as
`python -m mlx_qat <verb> ...`. `python -m mlx_qat.cli <verb> ...` and `python -m mlx_qat
<verb> ...` dispatch to the same functions.
"""

from __future__ import annotations

import json
import logging
import sys

VERBS = ("data", "train", "convert", "eval", "plan")


def _reexec(verb: str, argv: list[str] | None) -> list[str]:
    if argv is None:
        from .blas import reexec_with_openblas

        reexec_with_openblas(["-m", "mlx_qat", verb, *sys.argv[1:]])
        return sys.argv[1:]
    return list(argv)


def setup_logging(quiet: bool, fmt: str = "%(message)s", quiet_level: int = logging.WARNING):
    """mlx_qat's loggers to stderr in `fmt`: INFO, or `quiet_level` when quiet. One handler,
    however many verbs run in the process (a second call only changes format and level)."""
    log = logging.getLogger("mlx_qat")
    handler = next((h for h in log.handlers if getattr(h, "_mlx_qat", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler._mlx_qat = True  # type: ignore[attr-defined]
        log.addHandler(handler)
    handler.setFormatter(logging.Formatter(fmt))
    log.setLevel(quiet_level if quiet else logging.INFO)


def data_main(argv: list[str] | None = None) -> int:
    """`mlx_qat.data`: text → tokenizer + token shards (see `mlx_qat.data.cli`)."""
    argv = _reexec("data", argv)
    from .data import main

    return main(argv)


def convert_main(argv: list[str] | None = None) -> int:
    """`mlx_qat.convert`: checkpoint → MLX model dir (see `mlx_qat.convert`)."""
    argv = _reexec("convert", argv)
    from .convert import main

    return main(argv)


def eval_main(argv: list[str] | None = None) -> int:
    """`mlx_qat.eval`: FP / QAT / PTQ validation loss of a run or checkpoint."""
    argv = _reexec("eval", argv)
    setup_logging(False)
    from .eval import main

    return main(argv)


def train_main(argv: list[str] | None = None) -> int:
    """`mlx_qat.train`: train per flags / `--config` YAML; prints the plan and the result."""
    argv = _reexec("train", argv)
    from .train.checkpoint import CheckpointError
    from .train.compare import format_comparison
    from .train.config import parse_args
    from .train.trainer import Trainer, TrainingDiverged

    cfg = parse_args(argv)
    setup_logging(cfg.quiet)
    try:
        trainer = Trainer(cfg)
        trainer.setup()
        if not cfg.quiet:
            print(f"mlx_qat.train: {cfg.out}\n{trainer.plan.table()}", flush=True)
        result = trainer.run()
        if cfg.fp_twin:
            from .fileio import atomic_write_json
            from .train.compare import run_fp_twin

            result = run_fp_twin(cfg, trainer, result)
            atomic_write_json(trainer.run_dir / "result.json", result)
    except TrainingDiverged as e:
        print(f"mlx_qat.train: stopped: {e}", file=sys.stderr)
        return 3
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"mlx_qat.train: error: {e}", file=sys.stderr)
        return 1
    print(format_comparison(result))
    if cfg.plot:
        from .plot import plot_run

        try:
            print(f"plot: {plot_run(cfg.out)}")
        except ImportError as e:
            print(f"mlx_qat.train: {e}", file=sys.stderr)
    return 0


def plan_main(argv: list[str] | None = None) -> int:
    """`mlx_qat.plan`: print N, bytes, S, the auto fraction and the steps of each phase."""
    argv = _reexec("plan", argv)
    from .train.config import build_parser, parse_args
    from .train.planning import plan_for_config

    parser = build_parser(
        "mlx_qat.plan", "Print the phase plan of a training config (nothing is trained)."
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    args = vars(parser.parse_args(argv))
    as_json = args.pop("json", False)
    argv = [a for a in argv if a != "--json"]
    try:
        cfg = parse_args(argv)
        plan = plan_for_config(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"mlx_qat.plan: error: {e}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(plan.to_dict(), indent=2))
        return 0
    print(plan.table())
    bounds = sorted({0, max(plan.fp_steps - 1, 0), plan.fp_steps, plan.total_steps - 1})
    lrs = ", ".join(f"step {s}: {plan.lr_at(s):.3g}" for s in bounds if s < plan.total_steps)
    print(f"  LR at the boundaries  {lrs}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m mlx_qat <verb> [args]`."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] not in VERBS:
        print(f"usage: python -m mlx_qat {{{','.join(VERBS)}}} [args...]", file=sys.stderr)
        return 2
    verb, rest = args[0], args[1:]
    if argv is None:
        from .blas import reexec_with_openblas

        reexec_with_openblas(["-m", "mlx_qat", verb, *rest])
    fn = {
        "data": data_main,
        "train": train_main,
        "convert": convert_main,
        "eval": eval_main,
        "plan": plan_main,
    }[verb]
    return fn(rest)


if __name__ == "__main__":
    raise SystemExit(main())
