"""What a run reports at its end: result.json and a fine-tune's baseline (`twin.py`)."""

from __future__ import annotations

import json
import logging

import mlx.core as mx

from ..fileio import atomic_write_json
from ..prepare import prepare

logger = logging.getLogger(__name__)

RESULT = "result.json"


def pretrained_baseline(t) -> dict | None:
    """A fine-tune's baseline ({"val": {"teacher", "rtn"}, "test": ...}; None from scratch):
    the `--model` weights as given and their RTN at the run's formats, on the final
    batches (the run's own fp/ptq are its latent weights, which drifted from them)."""
    if not t.cfg.model:
        return None
    model = t.float_model()
    prepare(model, t.qcfg, enabled=False)  # fake quant off: fp is the teacher as given
    out = {}
    splits = [("val", t.final_val, t.bytes_per_token)]
    if t.final_test is not None:
        splits.append(("test", t.final_test, t.test_bytes_per_token))
    for split, batches, bpt in splits:
        ev = t.dist.eval_triple(model, batches, bpt, False)  # "ptq": min/max RTN
        out[split] = {"teacher": ev["fp"], "rtn": ev["ptq"]}
        logger.info("--model %s @ %s: teacher %.4f | rtn %s", t.cfg.model, split,
                    ev["fp"]["loss"], f"{ev['ptq']['loss']:.4f}" if ev["ptq"] else "n/a")  # fmt: skip
    t.metrics.write({"kind": "pretrained_eval", "step": t.step, **out})
    return out


def run_result(t) -> dict:
    """Trainer `t`'s result dict, written to result.json by rank 0."""
    tps = sorted(t.tokens_per_s)
    previous = t.run_dir / RESULT
    old = json.loads(previous.read_text(encoding="utf-8")) if previous.is_file() else {}
    if not tps and old.get("tokens_per_s"):  # a finished run, resumed: keep its throughput
        tps = [old["tokens_per_s"]]
    result = {
        "run_dir": str(t.run_dir),
        "steps": t.step,
        "tokens": t.tokens_seen,
        "plan": t.plan.to_dict(),
        "eval": t.last_eval,
        "test": t.last_test,
        "tokens_per_s": tps[len(tps) // 2] if tps else None,
        "train_s": round(t.elapsed, 2),
        "peak_memory_mb": round(mx.get_peak_memory() / 2**20, 1),
        "config_hash": t.cfg.hash(),
        "data": t.bundle.identity if t.bundle is not None else None,
        "world_size": t.dist.size,
    }
    if t.join_at is not None:
        result["weights_join_step"] = t.join_at
    for cb in t.callbacks:
        result.update(cb.on_train_end(t, result) or {})
    if t.cfg.model:  # a finished run resumed keeps the baseline it measured
        result["pretrained"] = t.pretrained or old.get("pretrained")
    if t.dist.is_main:
        atomic_write_json(t.run_dir / RESULT, result)
    return result
