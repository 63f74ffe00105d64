"""Evaluation: the FP / QAT / PTQ triple on the same batches, PTQ = stock round-to-nearest."""

from __future__ import annotations

import math

import mlx.core as mx
import pytest
import yaml
from mlx.utils import tree_flatten, tree_unflatten
from test_train_fixtures import VOCAB, tiny_config, tiny_data_dir  # noqa: F401

from mlx_qat.cli.eval import main as eval_main
from mlx_qat.data import eval_batches, load_bundle
from mlx_qat.eval_modes import bits_per_byte, eval_mode, eval_triple, evaluate, gap_recovered
from mlx_qat.models import model_from_config, preset_config
from mlx_qat.prepare import prepare, qat_layers, set_fake_quant
from mlx_qat.qat_config import QATConfig
from mlx_qat.train import train


@pytest.fixture(scope="module")
def val(tiny_data_dir):  # noqa: F811
    b = load_bundle(tiny_data_dir)
    return list(eval_batches(b.val, 4, 32, 3)), b.bytes_per_token["val"]


def lsq_model():
    mx.random.seed(1)
    model = model_from_config(preset_config("d2", VOCAB))
    prepare(model, QATConfig.with_bits(4, quantizer="lsq"), enabled=False)
    # Move the weights so the LSQ grid (from prepare) and min/max of the weights differ.
    for _, layer in qat_layers(model):
        layer.quantizer.alpha = layer.quantizer.alpha * 0.7
    mx.eval(model.parameters())
    return model


def test_bits_per_byte_and_gap():
    assert bits_per_byte(math.log(2) * 3.0, 1.5) == pytest.approx(2.0)
    assert gap_recovered(fp=2.0, qat=2.25, ptq=3.0) == pytest.approx(0.75)
    assert gap_recovered(fp=2.0, qat=2.25, ptq=2.0) is None  # no gap to recover
    assert gap_recovered(fp=2.0, qat=None, ptq=3.0) is None


def test_triple_uses_the_same_batches_and_restores_the_model(val):
    batches, bpt = val
    model = lsq_model()
    once = iter(batches)  # a one-shot iterator: every mode must still see all batches
    ev = eval_triple(model, once, bpt)
    n = sum(b.shape[0] * (b.shape[1] - 1) for b in batches)
    assert ev["fp"]["tokens"] == ev["qat"]["tokens"] == ev["ptq"]["tokens"] == n
    assert ev["fp"]["loss"] == evaluate(model, batches, bpt).loss  # fake quant was off
    assert all(not layer.fake_quant for _, layer in qat_layers(model))  # restored
    assert {type(layer.quantizer).__name__ for _, layer in qat_layers(model)} == {"LSQQuantizer"}
    set_fake_quant(model, True)
    assert ev["qat"]["loss"] == evaluate(model, batches, bpt).loss
    assert len({ev["fp"]["loss"], ev["qat"]["loss"], ev["ptq"]["loss"]}) == 3
    assert ev["fp"]["bpb"] == pytest.approx(bits_per_byte(ev["fp"]["loss"], bpt))


def test_ptq_is_stock_round_to_nearest_of_the_float_weights(val):
    batches, bpt = val
    model = lsq_model()
    with eval_mode(model, "ptq"):
        ptq = evaluate(model, batches, bpt).loss
    # Independent reference: replace every quantized weight by mx.dequantize(mx.quantize(w)).
    ref = model_from_config(preset_config("d2", VOCAB))
    weights = {}
    for k, v in tree_flatten(model.parameters()):
        if "quantizer" in k:
            continue
        if k.endswith("weight") and v.ndim == 2:
            w, s, b = mx.quantize(v, group_size=64, bits=4)
            v = mx.dequantize(w, s, b, group_size=64, bits=4)
        weights[k] = v
    ref.update(tree_unflatten(list(weights.items())))
    assert ptq == evaluate(ref, batches, bpt).loss


def test_minmax_reports_qat_equal_to_ptq(val):
    batches, bpt = val
    mx.random.seed(2)
    model = model_from_config(preset_config("d2", VOCAB))
    prepare(model, QATConfig.with_bits(4), enabled=True)
    ev = eval_triple(model, batches, bpt)
    assert ev["qat"] == ev["ptq"]
    assert ev["gap_recovered"] in (None, 0.0)


def test_eval_cli_on_a_run(tiny_data_dir, tmp_path, capsys):  # noqa: F811
    cfg = tiny_config(tiny_data_dir, tmp_path / "run", tokens=8 * 128, quantizer="lsq")
    result = train(cfg)
    assert eval_main([str(tmp_path / "run"), "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert "fp" in out and "qat" in out and "ptq" in out
    import json

    ev = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert ev["qat"]["loss"] == pytest.approx(result["eval"]["qat"]["loss"], rel=1e-6)
    resolved = yaml.safe_load((tmp_path / "ev" / "eval.yaml").read_text())
    assert resolved["path"] == str(tmp_path / "run") and resolved["eval_batches"] is None
    assert ev["split"] == "val" and "of the validation split" in out
    # --split test: the held-out split, the numbers of the run's result["test"].
    assert eval_main([str(tmp_path / "run"), "--out", str(tmp_path / "ev"), "--split", "test"]) == 0
    assert "of the test split" in capsys.readouterr().out
    test = json.loads((tmp_path / "ev" / "eval_test.json").read_text())
    assert test["split"] == "test" and test["tokens"] == result["test"]["fp"]["tokens"]
    for mode in ("fp", "qat", "ptq"):
        assert test[mode]["loss"] == pytest.approx(result["test"][mode]["loss"], rel=1e-6)
    assert test["fp"]["loss"] != ev["fp"]["loss"]
    assert yaml.safe_load((tmp_path / "ev" / "eval_test.yaml").read_text())["split"] == "test"
    assert eval_main([str(tmp_path / "nope")]) == 1


def test_eval_split_test_of_data_without_one_names_the_fix(tiny_data_dir, tmp_path, capsys):  # noqa: F811
    from test_train_fixtures import without_test_split

    old = without_test_split(tiny_data_dir, tmp_path / "old_data")
    train(tiny_config(old, tmp_path / "run", tokens=4 * 128))
    assert eval_main([str(tmp_path / "run"), "--split", "test"]) == 1
    err = capsys.readouterr().err
    assert "has no test split" in err and "prepare the data again" in err
    assert "Traceback" not in err and not (tmp_path / "run" / "eval_test.json").exists()
    assert eval_main([str(tmp_path / "run"), "--quiet"]) == 0  # validation: as before


def test_fine_tune_headline_is_teacher_rtn_of_teacher_and_qat(tiny_data_dir, tmp_path):  # noqa: F811
    """A `--model` run's printed table (and result.json) compares QAT with the model it
    started from and that model's round-to-nearest, not with its own drifted latent weights."""
    import json
    import re
    import subprocess
    import sys

    import mlx.nn as nn
    from tiny_models import float_model_dir

    src, teacher = float_model_dir(tmp_path / "float_model", vocab=VOCAB)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "mlx_qat", "train", "--model", str(src), "--data",
           str(tiny_data_dir), "--out", str(run), "--tokens", "512", "--batch-size", "2",
           "--seq-len", "32", "--eval-batches", "1", "--final-eval-batches", "2", "--bits", "2",
           "--quantizer", "learned_affine", "--lr", "3e-3", "--no-compile", "--quiet"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # independent references on the final test batches: the float model as mlx-lm runs it,
    # and MLX's own round-to-nearest of it (2-bit layers, the tied embedding at 4 bits)
    test = list(eval_batches(load_bundle(tiny_data_dir).test, 2, 32, 2))
    want_teacher = evaluate(teacher, test, 1.0).loss
    nn.quantize(teacher, class_predicate=lambda p, m: hasattr(m, "to_quantized") and {
        "group_size": 64, "bits": 4 if p.endswith("embed_tokens") else 2})  # fmt: skip
    want_rtn = evaluate(teacher, test, 1.0).loss
    res = json.loads((run / "result.json").read_text())
    cmp_ = res["comparison"]
    assert (cmp_["baseline"], cmp_["split"]) == ("teacher", "test")
    assert cmp_["fp"]["loss"] == pytest.approx(want_teacher, rel=1e-5)
    assert cmp_["ptq"]["loss"] == pytest.approx(want_rtn, rel=1e-5)
    qat = res["test"]["qat"]["loss"]
    assert cmp_["qat"]["loss"] == qat
    teacher_loss, rtn_loss = cmp_["fp"]["loss"], cmp_["ptq"]["loss"]
    assert cmp_["gap_recovered"] == pytest.approx((rtn_loss - qat) / (rtn_loss - teacher_loss))
    # not the run's own float weights, which moved away from the teacher at this LR
    assert abs(res["test"]["fp"]["loss"] - want_teacher) > 1e-3
    out = proc.stdout
    for label, value in [("teacher (--model float)", want_teacher), ("RTN of the teacher", want_rtn),
                         ("QAT", qat)]:  # fmt: skip
        row = re.search(rf"\| {re.escape(label)} +\| ([0-9.]+) ", out)
        assert row and float(row.group(1)) == pytest.approx(value, abs=1e-4), (label, out)
    assert f"RTN gap recovered by QAT: {100 * cmp_['gap_recovered']:.1f}%" in out
