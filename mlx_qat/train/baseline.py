"""A fine-tune's baseline: the `--model` float weights as given (the teacher) and their
round-to-nearest (RTN) at the run's formats, measured at the end of the run on the final
evaluation's batches (`result["pretrained"]`; `twin.comparison` reads it)."""

from __future__ import annotations

import logging

from ..models.build import make_model
from ..prepare import prepare

logger = logging.getLogger(__name__)


def pretrained_baseline(t) -> dict | None:
    """Trainer `t`'s baseline, for a fine-tune: the `--model` float weights as given (the
    teacher) and their round-to-nearest at the run's formats, on the final evaluation's
    batches of each split ({"val": {"teacher", "rtn"}, "test": ...}). The run's own fp/ptq
    are its latent weights, which drifted from the teacher; a fine-tune is judged against the
    model it started from. None for a from-scratch run. Writes the `pretrained_eval` record."""
    cfg = t.cfg
    if not cfg.model:
        return None
    model, _ = make_model(cfg, int(t.model_config.get("vocab_size") or 0), t.model_dir)
    prepare(model, t.qcfg, enabled=False)  # fake quant off: fp is the teacher as given
    out = {}
    splits = [("val", t.final_val, t.bytes_per_token)]
    if t.final_test is not None:
        splits.append(("test", t.final_test, t.test_bytes_per_token))
    for split, batches, bpt in splits:
        ev = t.dist.eval_triple(model, batches, bpt, False)  # "ptq": min/max RTN
        out[split] = {"teacher": ev["fp"], "rtn": ev["ptq"]}
        logger.info("--model %s @ %s: teacher %.4f | rtn %s", cfg.model, split,
                    ev["fp"]["loss"], f"{ev['ptq']['loss']:.4f}" if ev["ptq"] else "n/a")  # fmt: skip
    t.metrics.write({"kind": "pretrained_eval", "step": t.step, **out})
    return out
