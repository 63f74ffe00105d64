"""`train(config)`: the whole training job — the run, its FP twin, the FP / PTQ / QAT comparison
table, the loss plot.

The twin starts from the run's switch checkpoint and trains the QAT phase again — same data,
same LR schedule, same steps — with fake quant off and next-token cross-entropy, whatever the
run's `--objective`. At the end it is the FP model the same budget buys, and its
round-to-nearest PTQ is what QAT must beat. (A kd/mix twin would distil the switch weights
into a float copy of themselves — a different float model per objective, so recipes would not
be measured against one baseline.) So the comparison is at equal
total tokens D, and costs only the QAT phase's tokens again:

    % of the PTQ gap recovered = (PTQ_twin − QAT_run) / (PTQ_twin − FP_twin)

A fine-tune (`--model`) is compared with the model it started from instead: the `--model` float
weights (the teacher) and their round-to-nearest at the run's formats (`result["pretrained"]`,
measured on the same final batches), so that

    % of the RTN gap recovered = (RTN_teacher − QAT_run) / (RTN_teacher − teacher)

— its own latent weights drift from the teacher while QAT trains, and their PTQ is not what a
user would otherwise ship.

The table is measured on the held-out test split (`result["test"]`), on which no choice was
made; data prepared before the test split existed falls back to validation, and says so.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from ..checkpoint import CHECKPOINTS, list_checkpoints, step_dir_name
from ..fileio import atomic_write_json
from .config import TrainConfig
from .result import RESULT
from .trainer import Trainer

logger = logging.getLogger(__name__)

TWIN = "fp_twin"


def twin_config(config: TrainConfig, switch_step: int, data: str | None = None) -> TrainConfig:
    """The twin's config: the QAT phase with fake quant off, branched from the switch, on the
    run's prepared `data`; an attempt with checkpoints is resumed, one without overwritten."""
    out = Path(config.out) / TWIN
    resume = bool(list_checkpoints(out))
    branch = None if resume else str(Path(config.out) / CHECKPOINTS / step_dir_name(switch_step))
    return replace(
        config,
        out=str(out),
        data=[data] if data else config.data,
        ablate_qat=True,
        objective="ce",
        fp_twin=False,
        plot=False,
        resume=resume,
        reschedule=resume and config.reschedule,
        overwrite=not resume,
        branch_from=branch,
    )


SPLIT_NOTES = {
    "test": "test (held out by document hash; no choice was made on it)",
    "val": "validation: this data has no test split (prepared before mlx_qat.data held one "
    "out); prepare it again for held-out numbers",
}
BASELINES = {"teacher": "the --model float weights (teacher) and their round-to-nearest"}


def comparison(run: dict, twin: dict | None) -> dict:
    """FP, PTQ and QAT loss/bpb at equal budget and the gap recovered, on the test split
    ("val" when the run or its twin has none). A fine-tune is compared with its teacher and
    its RTN (`baseline` "teacher"); without a twin, the run's own final eval is used."""
    pre = run.get("pretrained")
    split = "test" if run.get("test") and (twin is None or twin.get("test")) else "val"
    if pre:
        split = "test" if run.get("test") and pre.get("test") else "val"
    key = "test" if split == "test" else "eval"
    ev = run.get(key) or {}
    if pre:
        fp, ptq, source = pre[split]["teacher"], pre[split]["rtn"], "teacher"
    elif twin is not None:
        tw = twin.get(key) or {}
        fp, ptq, source = tw.get("fp"), tw.get("ptq"), "fp twin"
    else:
        fp, ptq, source = ev.get("fp"), ev.get("ptq"), "same run"
    qat = ev.get("qat") if (run["plan"]["qat_steps"] > 0) else None
    gap = None
    if fp and ptq and qat and ptq["loss"] - fp["loss"] > 1e-9:
        gap = (ptq["loss"] - qat["loss"]) / (ptq["loss"] - fp["loss"])
    return dict(fp=fp, ptq=ptq, qat=qat, gap_recovered=gap, baseline=source, split=split)


def run_fp_twin(config: TrainConfig, trainer, result: dict) -> dict:
    """Train the twin (when the run had both phases) and attach `twin` and `comparison`."""
    plan = trainer.plan
    twin = None
    if plan.qat_steps > 0 and plan.fp_steps > 0:
        tcfg = twin_config(config, plan.switch_step, str(trainer.bundle.path))
        logger.info("training the FP twin in %s", tcfg.out)
        t = Trainer(tcfg)
        t.setup()
        twin = t.run()
    else:
        logger.info("fp twin: skipped (the run has no FP phase or no QAT phase)")
    result = dict(result)
    result["twin"] = twin
    result["comparison"] = comparison(result, twin)
    return result


def format_comparison(result: dict) -> str:
    """The table the main job prints: FP / PTQ / QAT loss and bpb on the test split (or, for
    data without one, the validation split, said in the table), gap, throughput."""
    cmp_ = result.get("comparison") or comparison(result, None)
    split = cmp_.get("split", "val")
    rows = [("model", f"{split} loss", "bits/byte")]
    names = ("FP (float)", "PTQ (RTN of FP)", "QAT", "PTQ gap")
    if cmp_.get("baseline") == "teacher":
        names = ("teacher (--model float)", "RTN of the teacher", "QAT", "RTN gap")
    for name, key in zip(names, ("fp", "ptq", "qat")):
        r = cmp_.get(key)
        rows.append((name, f"{r['loss']:.4f}" if r else "-", f"{r['bpb']:.4f}" if r else "-"))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(r)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (x + 2) for x in w) + "|")
    gap = cmp_.get("gap_recovered")
    plan = result["plan"]
    tps = result.get("tokens_per_s")
    lines += [
        "",
        f"{names[3]} recovered by QAT: " + (f"{100 * gap:.1f}%" if gap is not None else "n/a"),
        f"split: {SPLIT_NOTES[split]}",
        f"baseline: {BASELINES.get(cmp_.get('baseline'), cmp_.get('baseline'))}; tokens D = {plan['total_tokens']:,}, QAT fraction "
        f"f = {plan['fraction']:.3f} (S = {plan['tokens_per_byte']:.1f} tokens/byte, "
        f"auto f = {plan['f_hat']:.3f}), {plan['pipeline']} pipeline",
        f"throughput: {tps:,.0f} tokens/s (median step), train time {result['train_s']:.0f} s"
        if tps
        else "throughput: n/a",
    ]
    return "\n".join(lines)


def train(config: TrainConfig, on_step=None, callbacks=()) -> dict:
    """Train per `config`; returns the result (plan, final eval, throughput).

    With `config.fp_twin`, also trains the FP twin and adds `result["twin"]` and
    `result["comparison"]`; a fine-tune (`config.model`) has `result["pretrained"]` (its teacher
    and the teacher's RTN) and a `result["comparison"]` against them; with `config.plot`,
    draws `<out>/loss.png` (`result["plot"]`; needs matplotlib). Started by `mlx.launch` on
    several processes, trains data-parallel (`dist.py`): every process returns the same
    result, rank 0 alone writes. `callbacks` (`callbacks.TrainingCallback`) plug into the run
    (not into its FP twin).

    Example:
        >>> result = train(TrainConfig(out="runs/tiny", preset="d2", tokens=300_000))
        >>> result["eval"]["qat"]["bpb"]
    """
    trainer = Trainer(config, on_step, callbacks)
    trainer.setup()
    result = trainer.run()
    main = trainer.dist.is_main  # with several processes (mlx.launch) rank 0 alone writes
    if config.fp_twin:
        result = run_fp_twin(config, trainer, result)
    elif result.get("pretrained"):  # a fine-tune: its teacher / RTN / QAT headline
        result = {**result, "comparison": comparison(result, None)}
    if main and (config.fp_twin or result.get("pretrained")):
        atomic_write_json(Path(config.out) / RESULT, result)
    if config.plot and main:
        from .plot import plot_run

        try:
            result["plot"] = str(plot_run(config.out))
        except ImportError as e:
            logger.warning("plot: %s", e)
    return result
