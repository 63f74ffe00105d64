"""`mlx_qat.eval`: FP / QAT / PTQ loss of a run or checkpoint on the validation or the
held-out test split (`mlx_qat.eval.evaluate_checkpoint`).

    mlx_qat.eval runs/main/checkpoints/step_00000200 --eval-batches 16
    mlx_qat.eval runs/main --split test          # the held-out numbers (report, never tune)

Writes `<out>/eval.json` and `eval.yaml` (`eval_test.*` for `--split test`; `--out` defaults
to the run directory).
"""

from __future__ import annotations

from pathlib import Path

from ..eval_modes import MODES
from ..fileio import atomic_write_json, ensure_writable_dir
from .common import add_common, save_resolved, verb_main, verb_parser


def build_parser():
    """The flags of `mlx_qat.eval`."""
    p = verb_parser(
        "eval",
        "Loss and bits per byte of a checkpoint with fake quant off (FP), on (QAT) "
        "and round-to-nearest PTQ of its float weights, on the validation or the test split.",
    )
    p.add_argument("path", nargs="?", help="run directory (latest checkpoint) or checkpoint dir")
    p.add_argument("--data", help="prepared data dir (default: the run's)")
    p.add_argument(
        "--eval-batches", type=int, help="batches (default: the run's final_eval_batches; 0: all)"
    )
    p.add_argument("--batch-size", type=int, help="sequences per batch (default: the run's)")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default: the run's)")
    p.add_argument(
        "--split",
        choices=("val", "test"),
        default="val",
        help="val: the validation split (curves, tuning); test: the held-out split, for "
        "reporting only (data prepared before it existed has none)",
    )
    p.add_argument(
        "--teacher",
        metavar="DIR",
        help="also report each mode's mean KL(teacher || model) per token: an mlx-lm model dir "
        "or Hugging Face repo id, or a run/checkpoint dir (its float weights), with the run's "
        "vocabulary and tokenizer (checked by hash)",
    )
    p.add_argument("--revision", help="hub revision (branch, tag or commit) of a --teacher repo id")
    p.add_argument("--out", metavar="DIR", help="where eval.json goes (default: the run dir)")
    add_common(p)
    return p


def _report(ev: dict) -> str:
    lines = [f"{ev['checkpoint']} (step {ev['step']}, phase {ev['phase']})"]
    split = {"val": "validation", "test": "test"}.get(ev.get("split"), "?")
    lines.append(
        f"  {ev['tokens'] if ev['tokens'] is not None else '?'} tokens of the {split} split"
    )
    for mode in MODES:
        r = ev.get(mode)
        if r:
            kl = f"  kl {r['kl']:.4f}" if r.get("kl") is not None else ""
            lines.append(f"  {mode:<4} loss {r['loss']:.4f}  bpb {r['bpb']:.4f}{kl}")
    if ev.get("gap_recovered") is not None:
        lines.append(f"  PTQ gap recovered: {100 * ev['gap_recovered']:.1f}%")
    elif ev["minmax"]:
        lines.append(
            "  (min/max quantizer: QAT and PTQ are the same grid of these weights; the PTQ "
            "baseline is an FP model of the same budget, e.g. the run's fp_twin)"
        )
    return "\n".join(lines)


def _run(opts: dict) -> int:
    from ..eval import check_batch_args, evaluate_checkpoint

    if not opts.get("path"):
        raise ValueError("give the run or checkpoint directory to evaluate (mlx_qat.eval RUN)")
    check_batch_args(opts["eval_batches"], opts["batch_size"], opts["seq_len"])
    target = Path(opts["path"])
    run_dir = target if (target / "checkpoints").is_dir() else target.parent.parent
    out = Path(opts["out"]) if opts.get("out") else run_dir
    if target.is_dir():  # else evaluate_checkpoint names the missing path
        ensure_writable_dir(out, f"--out {out} (where eval.json goes)")
    split = opts.get("split") or "val"
    ev = evaluate_checkpoint(
        opts["path"],
        opts["data"],
        opts["eval_batches"],
        opts["batch_size"],
        opts["seq_len"],
        split=split,
        teacher=opts.get("teacher"),
        revision=opts.get("revision"),
    )
    name = "eval" if split == "val" else f"eval_{split}"
    try:
        atomic_write_json(out / f"{name}.json", ev)
        save_resolved(out / f"{name}.yaml", "eval", opts)
    except OSError as e:
        print(_report(ev))
        raise ValueError(
            f"--out {out}: cannot write {name}.json there ({e.strerror or e}); choose a "
            "writable directory"
        ) from None
    print(_report(ev))
    return 0


main = verb_main("eval", build_parser, _run)
