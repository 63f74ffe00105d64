"""The QAT phase's basin monitor (train/basin.py, `--basin-monitor`): the basin level against a
hand computation, the inward cosine where its value is known (a quadratic pull to the
reference: exactly 1) and against numpy, the re-entry step on a hand-made evaluation sequence,
a run's records against an independent recomputation, training unchanged by the monitor,
exact resume, the references of a fine-tune and of a distillation run."""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import replace
from types import SimpleNamespace

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from test_train_fixtures import (  # noqa: F401
    timeless_records,
    tiny_config,
    tiny_data_dir,
    train_until,
)

from mlx_qat import QATConfig, QuantSpec, prepare
from mlx_qat.checkpoint import build_model, list_checkpoints, load_checkpoint
from mlx_qat.data import eval_batches, load_bundle
from mlx_qat.eval_modes import basin_level, eval_mode, evaluate
from mlx_qat.prepare import qat_layers
from mlx_qat.train import Trainer, train
from mlx_qat.train.basin import (
    BasinMonitor,
    inward_cosines,
    reference_weights,
    ste_gradients,
    track_reentry,
)
from mlx_qat.train.metrics import read_metrics

SPEC = QuantSpec("affine", 3, 32)


def rtn(w: mx.array) -> np.ndarray:
    """Round-to-nearest by MLX's own quantize/dequantize (the fake = real invariant)."""
    return np.array(mx.dequantize(*mx.quantize(w, group_size=32, bits=3), group_size=32, bits=3))


def np_cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 32, bias=False)
        self.b = nn.Linear(32, 16, bias=False)

    def __call__(self, x):
        return self.b(self.a(x))


def two_layers(seed: int = 0):
    """A prepared two-layer module (3 bits, groups of 32), its reference weights w_fp and
    latent weights moved away from them (so that Q(w) != w_fp != w)."""
    mx.random.seed(seed)
    model = prepare(Two(), QATConfig(weights=SPEC))
    ref = {p: layer.weight for p, layer in qat_layers(model)}
    for _, layer in qat_layers(model):
        layer.weight = layer.weight + 0.05 * mx.random.normal(layer.weight.shape)
    mx.eval(model.parameters())
    return model, ref


def test_basin_level_is_diagnoses_rule_by_hand():
    # differences 0.1, 0.3: mean 0.2, sd sqrt(0.02), SE 0.1 -> eps = 2 SE = 0.2
    eps, se = basin_level([3.1, 3.3], [3.0, 3.0])
    assert se == pytest.approx(0.1) and eps == pytest.approx(0.2)
    # a steady gap (SE 0): the 0.01-nat floor
    assert basin_level([3.5, 3.5, 3.5], [3.0, 3.0, 3.0]) == (0.01, 0.0)
    d = np.array([0.02, -0.01, 0.05, 0.0])
    want = max(0.01, 2 * d.std(ddof=1) / math.sqrt(4))
    assert basin_level(list(3 + d), [3.0] * 4)[0] == pytest.approx(want)


def test_inward_cos_is_one_for_a_quadratic_pull_to_the_reference():
    """L = Σ ||Q(w) − w_fp||²: the STE gradient is 2 (Q(w) − w_fp), so −g points exactly
    along w_fp − Q(w) (cos 1) in every layer; the float gradient 2 (w − w_fp) does not."""
    model, ref = two_layers()

    def pull(m, x, y):
        return sum(((layer.effective_weight() - ref[p]) ** 2).sum() for p, layer in qat_layers(m))

    g = ste_gradients(model, pull, mx.zeros((1, 2), dtype=mx.int32))
    for p, layer in qat_layers(model):
        want = 2 * (rtn(layer.weight) - np.array(ref[p]))
        np.testing.assert_allclose(np.array(g[p]), want, atol=1e-6)
    t = SimpleNamespace(model=model, val=[mx.zeros((1, 2), dtype=mx.int32)])
    got = BasinMonitor(ref).measure(t, loss=pull)
    assert got["inward_cos"] == pytest.approx(1.0, abs=1e-6)
    assert set(got["inward_cos_layers"]) == {"a", "b"}
    assert all(c == pytest.approx(1.0, abs=1e-6) for c in got["inward_cos_layers"].values())
    # fake quant off: g_fp = 2 (w − w_fp), against the same direction w_fp − Q(w)
    lat = [np.array(layer.weight) for _, layer in qat_layers(model)]
    wq = [rtn(layer.weight) for _, layer in qat_layers(model)]
    w0 = [np.array(ref[p]) for p, _ in qat_layers(model)]
    want_fp = np_cos(
        np.concatenate([(a - b).ravel() for a, b in zip(w0, lat)]),
        np.concatenate([(a - b).ravel() for a, b in zip(w0, wq)]),
    )
    assert got["inward_cos_fp"] == pytest.approx(want_fp, abs=1e-5)
    assert 0.1 < want_fp < 0.99  # a real difference from the STE's 1
    assert all(layer.fake_quant for _, layer in qat_layers(model))  # restored


def test_inward_cos_of_a_linear_loss_equals_numpy():
    """L = Σ <A_l, Q(w_l)>: g_l = A_l. Global cosine over the layers flattened together (not
    the mean of the layers'), and each layer's, against numpy."""
    model, ref = two_layers(1)
    mx.random.seed(2)
    A = {p: mx.random.normal(layer.weight.shape) for p, layer in qat_layers(model)}

    def linear(m, x, y):
        return sum((layer.effective_weight() * A[p]).sum() for p, layer in qat_layers(m))

    g = ste_gradients(model, linear, mx.zeros((1, 2), dtype=mx.int32))
    q = {p: layer.effective_weight() for p, layer in qat_layers(model)}
    cos, per = inward_cosines(g, ref, q)
    d = {p: np.array(ref[p]) - rtn(layer.weight) for p, layer in qat_layers(model)}
    for p in A:
        assert per[p] == pytest.approx(np_cos(-np.array(A[p]), d[p]), abs=1e-5)
    flat_g = np.concatenate([-np.array(A[p]).ravel() for p in A])
    flat_d = np.concatenate([d[p].ravel() for p in A])
    assert cos == pytest.approx(np_cos(flat_g, flat_d), abs=1e-5)
    assert abs(cos - np.mean(list(per.values()))) > 1e-4  # the test tells the two apart
    # a layer whose quantized point is its reference: no direction, no cosine
    _, per0 = inward_cosines(g, {"a": q["a"]}, q)
    assert per0 == {"a": None}


class Lines(list):
    def write(self, record):
        self.append(record)


def test_reentry_is_the_first_eval_within_eps_of_the_switch_loss():
    state = {"switch_step": 10, "ref_loss": 3.0, "eps": 0.0625, "reentry_step": None}
    metrics = Lines()
    seq = [(15, 3.25), (20, None), (25, 3.0625), (30, 3.5), (35, 2.75)]  # 3.0625: on the level
    for step, loss in seq:
        track_reentry(state, step, {"qat": None if loss is None else {"loss": loss}}, metrics)
    assert state["reentry_step"] == 25
    assert [(r["kind"], r["step"], r["steps_after_switch"]) for r in metrics] == [
        ("basin_reentry", 25, 15)
    ]
    assert metrics[0]["level"] == 3.0625 and metrics[0]["qat_loss"] == 3.0625
    # without a reference (the monitor was off at the switch) there is no re-entry
    blind = {"switch_step": 10, "ref_loss": None, "eps": None, "reentry_step": None}
    assert not track_reentry(blind, 40, {"qat": {"loss": 0.0}}, metrics)


KW = dict(basin_monitor=True, eval_every=5, qat_fraction=0.5)


def test_run_records_match_an_independent_recomputation(tiny_data_dir, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    kw = {**KW, "bits": 2, "eval_batches": 4}  # a noisy gap: eps is 2 SE, above the floor
    result = train(tiny_config(tiny_data_dir, run, **kw))
    (ref,) = read_metrics(run, "basin_reference")
    switch = ref["step"]
    evals = read_metrics(run, "eval")
    at_switch = next(r for r in evals if r["step"] == switch)
    assert ref["ref_loss"] == at_switch["fp"]["loss"]
    # the level: per-batch FP and RTN losses of the switch checkpoint, SE by numpy
    cfg = tiny_config(tiny_data_dir, run, **kw)
    bundle = load_bundle(tiny_data_dir)
    val = list(eval_batches(bundle.val, cfg.batch_size, cfg.seq_len, cfg.eval_batches))
    sw = build_model(dict(list_checkpoints(run))[switch])
    bpt = float(bundle.bytes_per_token["val"])
    per = {}
    for mode in ("fp", "ptq"):
        with eval_mode(sw, mode):
            per[mode] = np.array([evaluate(sw, [b], bpt).loss for b in val])
    diff = per["ptq"] - per["fp"]
    assert ref["eps"] == pytest.approx(2 * diff.std(ddof=1) / np.sqrt(len(diff)))
    assert ref["eps"] > 0.01
    assert ref["ptq_gap"] == pytest.approx(diff.mean(), abs=1e-5)
    assert ref["outside"] == (ref["ptq_gap"] > ref["eps"])
    # the cosines on the QAT phase's eval lines only, one per QAT layer
    paths = {p for p, _ in qat_layers(sw)}
    for r in evals:
        assert ("inward_cos" in r) == (r["step"] > switch)
        if r["step"] > switch:
            assert -1 <= r["inward_cos"] <= 1 and set(r["inward_cos_layers"]) == paths
    # re-entry: the first QAT eval within eps of the switch's FP loss
    level = ref["ref_loss"] + ref["eps"]
    first = next(r["step"] for r in evals if r["step"] > switch and r["qat"]["loss"] <= level)
    assert result["basin_reentry_step"] == first
    assert [r["step"] for r in read_metrics(run, "basin_reentry")] == [first]
    assert json.loads((run / "result.json").read_text())["basin_reentry_step"] == first
    # the last eval's cosine from the last checkpoint, w_fp the switch checkpoint's weights,
    # the gradient of the cross-entropy on the first validation batch
    last = build_model(run)
    w_fp = load_checkpoint(dict(list_checkpoints(run))[switch], optimizer=False).weights

    def ce(m, x, y):
        return nn.losses.cross_entropy(m(x).astype(mx.float32), y, reduction="mean")

    _, grads = nn.value_and_grad(last, ce)(last, val[0][:, :-1], val[0][:, 1:])
    grads = dict(tree_flatten(grads))
    gs, ds = [], []
    for p, layer in qat_layers(last):
        gs.append(-np.array(grads[f"{p}.weight"]).ravel())
        ds.append((np.array(w_fp[f"{p}.weight"]) - np.array(layer.effective_weight())).ravel())
    assert evals[-1]["inward_cos"] == pytest.approx(
        np_cos(np.concatenate(gs), np.concatenate(ds)), abs=1e-4
    )
    if importlib.util.find_spec("matplotlib"):  # the plot draws the level and the cosine
        from mlx_qat.train.plot import plot_run

        assert plot_run(run).stat().st_size > 0


def test_the_monitor_changes_nothing_in_training(tiny_data_dir, tmp_path):  # noqa: F811
    on = train(tiny_config(tiny_data_dir, tmp_path / "on", **KW))
    off = train(tiny_config(tiny_data_dir, tmp_path / "off", **{**KW, "basin_monitor": False}))
    assert "basin_reentry_step" in on and "basin_reentry_step" not in off
    assert on["config_hash"] == off["config_hash"]

    def strip(r):
        drop = ("tokens_per_s", "step_s", "peak_memory_mb", "inward_cos", "inward_cos_fp",
                "inward_cos_layers")  # fmt: skip
        return {k: v for k, v in r.items() if k not in drop}

    for kind in ("train", "eval", "final_eval", "test_eval"):
        a = [strip(r) for r in read_metrics(tmp_path / "on", kind)]
        assert a and a == [strip(r) for r in read_metrics(tmp_path / "off", kind)], kind
    a, b = load_checkpoint(tmp_path / "on"), load_checkpoint(tmp_path / "off")
    for k, v in b.weights.items():
        assert mx.array_equal(a.weights[k], v), k


def test_resume_keeps_the_reference_and_the_reentry(tiny_data_dir, tmp_path):  # noqa: F811
    """Stopped at step 27 (after the QAT-phase checkpoint at 25) and resumed: the reference is
    read back from the switch checkpoint and the re-entry from state.json; the metrics repeat
    the uninterrupted run's, with one basin_reentry record."""
    kw = {**KW, "save_every": 5}
    ref = train(tiny_config(tiny_data_dir, tmp_path / "ref", **kw))
    cut = tiny_config(tiny_data_dir, tmp_path / "cut", **kw)
    train_until(cut, 27)
    state = load_checkpoint(tmp_path / "cut").state
    assert state["step"] == 25 and state["basin"]["switch_step"] == 20
    resumed = train(replace(cut, resume=True))
    assert ref["basin_reentry_step"] is not None
    assert resumed["basin_reentry_step"] == ref["basin_reentry_step"]
    assert resumed["basin"] == ref["basin"]
    for kind in ("basin_reference", "eval", "basin_reentry", "train"):
        got, want = (
            timeless_records(tmp_path / "cut", kind),
            timeless_records(tmp_path / "ref", kind),
        )
        assert got == want, kind
    assert len(read_metrics(tmp_path / "cut", "basin_reentry")) == 1


def test_references_of_a_fine_tune_and_of_a_distillation_run(tiny_data_dir, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="basin_monitor: .* no FP phase"):
        Trainer(
            tiny_config(tiny_data_dir, tmp_path / "a", basin_monitor=True, qat_fraction=1.0)
        ).setup()
    # a fine-tune: w_fp is the --model weights, also when read again (a QAT-phase resume)
    from mlx_qat.models import model_from_config, preset_config

    src = tmp_path / "float_model"
    src.mkdir()
    mcfg = preset_config("d2", 512)
    mx.random.seed(7)
    weights = dict(tree_flatten(model_from_config(mcfg).parameters()))
    mx.save_safetensors(str(src / "model.safetensors"), weights)
    (src / "config.json").write_text(json.dumps(mcfg))
    cfg = tiny_config(tiny_data_dir, tmp_path / "ft", model=str(src), qat_fraction=1.0,
                      tokens=4 * 128, basin_monitor=True, eval_every=2)  # fmt: skip
    t = Trainer(cfg)
    t.setup()
    t.run()
    assert t.basin.state["switch_step"] == 0 and read_metrics(tmp_path / "ft", "basin_reference")
    again = reference_weights(t, at_switch=False)
    for p, w in t.basin.ref.items():
        assert mx.array_equal(w, weights[f"{p}.weight"]) and mx.array_equal(again[p], w), p
    # kd: the teacher holds the switch weights, so the monitor keeps no copy of its own
    t = Trainer(tiny_config(tiny_data_dir, tmp_path / "kd", objective="kd", **KW))
    t.setup()
    t.run()
    teacher = dict(tree_flatten(t.teacher.parameters()))
    w_fp = load_checkpoint(dict(list_checkpoints(tmp_path / "kd"))[20], optimizer=False).weights
    for p, w in t.basin.ref.items():
        assert w is teacher[f"{p}.weight"] and mx.array_equal(w, w_fp[f"{p}.weight"]), p


def test_the_memory_check_counts_the_reference_copy(tiny_data_dir, tmp_path, monkeypatch):  # noqa: F811
    """The step-memory estimate adds the reference (the QAT layers' float weights) unless the
    teacher holds it; with a limit between the two estimates, only the monitored run is
    refused, by name."""
    from mlx_qat.train import memory
    from mlx_qat.train.basin import basin_reference_bytes

    cfg = tiny_config(tiny_data_dir, tmp_path / "run", **KW)
    t = Trainer(cfg)
    t.setup()
    n = sum(layer.weight.nbytes for _, layer in qat_layers(t.model))
    assert n > 0 and basin_reference_bytes(cfg, t.model, t.plan) == n
    for kw, want in (
        (dict(basin_monitor=False), 0),
        (dict(objective="kd"), 0),  # the teacher is the switch weights: shared
        (dict(objective="kd", teacher_dtype="bfloat16"), n),
    ):
        assert basin_reference_bytes(replace(cfg, **kw), t.model, t.plan) == want, kw
    params = sum(v.nbytes for _, v in tree_flatten(t.model.parameters()))
    t.metrics.close()
    base = memory.step_bytes(t.model_config, params, cfg.batch_size, cfg.seq_len)["total"]
    monkeypatch.setattr(memory, "available_memory", lambda: (base + n // 2, "a test limit"))
    Trainer(replace(cfg, basin_monitor=False, out=str(tmp_path / "off"))).setup()
    with pytest.raises(ValueError, match=r"basin_reference 0\.0.*a test limit"):
        Trainer(replace(cfg, out=str(tmp_path / "on"))).setup()
