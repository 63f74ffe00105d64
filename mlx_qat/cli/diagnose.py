"""`mlx_qat.diagnose`: is round-to-nearest PTQ at a format fine, is QAT needed, or should the
format change? Loss-basin diagnostics of a float model (`mlx_qat.diagnose.diagnose`).

    mlx_qat.diagnose runs/main --bits 2                 # the run's latest checkpoint
    mlx_qat.diagnose path/to/mlx_model --data data/ --bits 4   # a float mlx-lm model

Prints a table and the verdict; writes diagnose.json, diagnose.yaml and diagnose.png under
`--out` (`default_out`).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import fields
from pathlib import Path

from ..fileio import atomic_write_json, ensure_writable_dir
from ..quant.spec import MODES
from .common import add_common, save_resolved, verb_main, verb_parser

logger = logging.getLogger(__name__)


def build_parser():
    """The flags of `mlx_qat.diagnose`."""
    from ..diagnose import ATTRIBUTION, DiagnoseSettings

    d = DiagnoseSettings()
    p = verb_parser(
        "diagnose",
        "Loss-basin diagnostics of a float model at a target format: the loss "
        "along the quantization direction (PTQ gap, basin edge, kappa), along random "
        "directions of the same size, at stochastic roundings, per layer; and a verdict: "
        "PTQ is fine / QAT needed / change the format.",
    )
    p.add_argument(
        "path", nargs="?", help="run dir, checkpoint dir, float mlx-lm model dir or hub repo id"
    )
    p.add_argument("--revision", help="hub revision (branch, tag or commit) of a repo id")
    p.add_argument("--data", help="prepared data dir (default: the run's; needed for mlx-lm)")
    fmt = p.add_argument_group("target format (default: the checkpoint's own)")
    fmt.add_argument("--bits", type=int, help="weight bits")
    fmt.add_argument("--group-size", type=int, help="quantization group size")
    fmt.add_argument("--mode", choices=MODES, help="MLX quantization mode")
    fmt.add_argument("--embed-bits", type=int, help="embedding/head bits (default max(bits, 4))")
    ev = p.add_argument_group("evaluation")
    ev.add_argument("--eval-batches", type=int, default=4, help="fixed validation batches")
    ev.add_argument("--batch-size", type=int, help="sequences per batch (default: the run's)")
    ev.add_argument("--seq-len", type=int, help="tokens per sequence (default: the run's)")
    m = p.add_argument_group("measurements")
    m.add_argument("--alpha-max", type=float, default=d.alpha_max, help="line scan to this α")
    m.add_argument("--alpha-points", type=int, default=d.alpha_points, help="line scan points")
    m.add_argument(
        "--random-draws", type=int, default=d.random_draws, help="random directions (0: skip)"
    )
    m.add_argument(
        "--random-scales",
        type=float,
        nargs="+",
        default=list(d.random_scales),
        help="step sizes of the random scan, in units of the rounding error",
    )
    m.add_argument(
        "--sr-draws", type=int, default=d.sr_draws, help="stochastic roundings (0: skip)"
    )
    m.add_argument(
        "--attribution",
        choices=ATTRIBUTION,
        default=d.attribution,
        help="per-layer scans: each layer, each block, or none",
    )
    m.add_argument(
        "--layer-alphas",
        type=float,
        nargs="+",
        default=list(d.layer_alphas),
        help="step sizes of each layer's scan",
    )
    m.add_argument(
        "--tolerance",
        type=float,
        default=d.tolerance,
        help="PTQ is fine when its gap is at most this many nats (0.01: +1%% perplexity)",
    )
    m.add_argument("--seed", type=int, default=d.seed, help="seed of every random draw")
    p.add_argument("--out", metavar="DIR", help="where diagnose.json goes (default: see above)")
    p.add_argument(
        "--plot",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="draw diagnose.png (needs matplotlib)",
    )
    add_common(p)
    return p


def default_out(path: str | Path, weights: str) -> Path:
    """`<run dir>/diagnose_<format>` for a run or checkpoint, else `./diagnose_<name>_<format>`
    (a hub id's name: `org/name` -> `name`)."""
    from ..model_source import is_checkpoint_dir

    p = Path(path)
    if p.is_dir() and is_checkpoint_dir(p):
        run_dir = p if (p / "checkpoints").is_dir() else p.parent.parent
        return run_dir / f"diagnose_{weights}"
    name = p.resolve().name if p.exists() else str(path).rsplit("/", 1)[-1]
    return Path.cwd() / f"diagnose_{name}_{weights}"


# The settings passed to `diagnose` as they are.
_DIAGNOSE_ARGS = ("data", "bits", "group_size", "mode", "embed_bits", "eval_batches",
                  "batch_size", "seq_len")  # fmt: skip


def _run(opts: dict) -> int:
    from ..diagnose import DiagnoseSettings, diagnose
    from ..diagnose.report import format_report, plot_diagnosis

    if not opts.get("path"):
        raise ValueError(
            "give the run, checkpoint or mlx-lm model to diagnose (mlx_qat.diagnose RUN)"
        )
    names = [f.name for f in fields(DiagnoseSettings) if f.name in opts]
    settings = DiagnoseSettings(
        **{k: tuple(opts[k]) if isinstance(opts[k], list) else opts[k] for k in names}
    )
    if opts.get("out"):
        ensure_writable_dir(opts["out"], f"--out {opts['out']}")
    kw = {k: opts[k] for k in _DIAGNOSE_ARGS}
    d = diagnose(opts["path"], settings=settings, revision=opts.get("revision"), **kw)
    report = format_report(d)
    out = (
        Path(opts["out"]) if opts.get("out") else default_out(opts["path"], d["format"]["weights"])
    )
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "diagnose.json", d)
        save_resolved(out / "diagnose.yaml", "diagnose", opts)
    except OSError as e:
        print(report)
        raise ValueError(
            f"{out}: cannot write diagnose.json there ({e.strerror or e}); pass --out with a "
            "writable directory"
        ) from None
    print(report)
    if opts["plot"]:
        try:
            print(f"  plot: {plot_diagnosis(d, out / 'diagnose.png')}")
        except ImportError as e:
            logger.warning("diagnose: no plot (%s); diagnose.json is written", e)
    print(f"  results: {out / 'diagnose.json'}")
    return 0


main = verb_main("diagnose", build_parser, _run)
