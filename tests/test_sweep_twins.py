"""A 2-point micro version of sweep_tiny_v2, trained: the shipped file's own settings (fixed
cooldown, float twins, FP anchor), one fused and one classic QAT run on a tiny model.

The reference is independent of the twin code: with the cooldown fixed, the fused run's float
twin (its QAT phase again with fake quant off, branched from its switch) has the FP anchor's
LR at every step, so it must end where the anchor — a separate run, the trunk itself — ends.
"""

from __future__ import annotations

import pytest
import yaml
from test_train_fixtures import REPO, tiny_data_dir  # noqa: F401

from mlx_qat.sweep import load_sweep, plan_trunks, run_sweep

TPS = 4 * 32
STEPS = 40  # cooldown 8 steps; f = 0.1: 4 QAT steps, all inside the decay


def micro_v2(tmp_path, data_dir) -> str:
    doc = yaml.safe_load((REPO / "mlx_qat/configs/sweep_tiny_v2.yaml").read_text())
    assert doc["fp_twins"] is True and doc["train"]["cooldown_mode"] == "fixed"
    doc["out"], doc["data"] = str(tmp_path / "out"), str(data_dir)
    doc["train"].update(batch_size=4, seq_len=32, warmup_steps=2, final_eval_batches=2,
                        cache_limit_mb=256)  # fmt: skip
    doc["defaults"] = {}
    doc["grids"] = [
        {"name": "micro", "models": ["d2"], "tokens": [STEPS * TPS], "bits": [4],
         "fractions": [0.1], "pipelines": ["fused", "classic"]},
    ]  # fmt: skip
    path = tmp_path / "micro_v2.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_micro_v2_rows_hold_the_twin_and_the_fused_twin_is_the_fp_anchor(tmp_path, tiny_data_dir):  # noqa: F811
    sweep = load_sweep(micro_v2(tmp_path, tiny_data_dir))
    (trunk,) = plan_trunks(sweep)
    assert trunk.root.point.fraction == 0.0  # the anchor trains the FP prefix, once
    rows = {r["name"]: r for r in run_sweep(sweep)}
    assert len(rows) == 3
    anchor = rows["d2_D5120_b4_f0_fused_s0"]
    fused = rows["d2_D5120_b4_f0.1_fused_s0"]
    classic = rows["d2_D5120_b4_f0.1_classic_s0"]
    assert anchor["fp_twin_loss"] is None and anchor["qat_penalty"] is None
    assert (fused["D_qat"], classic["D_qat"]) == (4 * TPS, 4 * TPS)
    # same schedule, same data, fake quant off: the fused twin ends where the anchor ends
    assert fused["fp_twin_loss"] == pytest.approx(anchor["fp_loss"], rel=1e-6)
    assert fused["fp_twin_test_loss"] == pytest.approx(anchor["test_loss"], rel=1e-6)
    for r in (fused, classic):
        assert r["qat_penalty"] == pytest.approx(r["final_loss"] - r["fp_twin_loss"], abs=1e-12)
        assert r["qat_penalty_test"] == pytest.approx(r["test_loss"] - r["fp_twin_test_loss"])
    # the classic run's twin has the classic schedule (FP cooldown, re-warmup): not the anchor's
    assert classic["fp_twin_loss"] != pytest.approx(anchor["fp_loss"], rel=1e-6)
    assert run_sweep(sweep) == list(rows.values())  # nothing trained again
