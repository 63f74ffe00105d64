"""Loss-basin diagnostics (`mlx_qat.diagnose`): the measures against hand computations, the
perturbations against their definitions, the line scan's end points against an independent
`eval_triple`, and the verdict checked against what happens next on a tiny model trained by
the real trainer: where it says "PTQ is fine" (8 bits) the PTQ gap is within its level ε, and
where it says "QAT needed" (2 bits) a short QAT run recovers a measured share of the gap."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlx.core as mx
import pytest
import yaml
from test_train_fixtures import VOCAB, tiny_config, tiny_data_dir  # noqa: F401

import mlx_qat.diagnose.report as report
import mlx_qat.diagnose.verdict as rules
from mlx_qat.checkpoint import load_checkpoint
from mlx_qat.cli.diagnose import main as diagnose_main
from mlx_qat.data import eval_batches, load_bundle
from mlx_qat.diagnose import (
    CHANGE_FORMAT,
    PTQ_FINE,
    QAT_NEEDED,
    DiagnoseSettings,
    diagnose,
    diagnose_model,
    target_config,
)
from mlx_qat.diagnose.measures import basin_edge, kappa, paired_se, wall_slope
from mlx_qat.diagnose.probe import matched_random, stochastic_round
from mlx_qat.diagnose.scan import units_of
from mlx_qat.diagnose.verdict import (
    alternatives,
    calibration_points,
    expected_recovery,
    verdict,
)
from mlx_qat.eval_modes import eval_triple
from mlx_qat.models import model_from_config, preset_config
from mlx_qat.prepare import prepare, qat_layers
from mlx_qat.qat_config import QATConfig
from mlx_qat.quant import QuantSpec, fake_quantize
from mlx_qat.quant.affine import dequantize_codes, group, minmax_params
from mlx_qat.train import train

ROOT = Path(__file__).resolve().parents[1]
BATCHES = 8  # of the run's 4 x 32 tokens: enough that the gap's noise stays below its size
CHEAP = dict(random_draws=1, random_scales=(0.5, 1.0, 2.0), sr_draws=2, attribution="block")
CHEAP_FLAGS = [
    "--random-draws", "1", "--random-scales", "0.5", "1", "2", "--sr-draws", "2",
    "--attribution", "block", "--eval-batches", "2", "--alpha-points", "7",
]  # fmt: skip


@pytest.fixture(scope="module")
def qat_run(tiny_data_dir, tmp_path_factory):  # noqa: F811
    """A d2 run of 300 steps at lr 1e-2 without weight decay, the last 75 in QAT at 2 bits
    throughout (weights and embeddings affine2g64), and its FP twin (`<run>/fp_twin`: the same
    75 steps from the same switch with fake quant off). The twin is a float model trained 300
    steps, long enough that 2-bit round-to-nearest of the whole model costs ~3% of the loss
    while 8 bits costs nothing; the QAT run is what QAT at that format makes of the same
    budget (it recovered 39% of the twin's 2-bit PTQ gap when this was written)."""
    out = tmp_path_factory.mktemp("diagnose") / "run"
    cfg = tiny_config(
        tiny_data_dir,
        out,
        tokens=300 * 4 * 32,
        qat_fraction=0.25,
        lr=1e-2,
        weight_decay=0.0,
        bits=2,
        embed_bits=2,
        fp_twin=True,
    )
    train(cfg)
    return out


@pytest.fixture(scope="module")
def float_run(qat_run):
    """The FP twin of `qat_run`: a float model whose recorded format is 2 bits throughout."""
    return qat_run / "fp_twin"


def independent_triple(run, data_dir, bits: int) -> dict:
    """`eval_triple` of the run's float weights in a model prepared afresh with every layer at
    `bits`, on the batches `diagnose` uses."""
    ckpt = load_checkpoint(run, optimizer=False)
    model = model_from_config(ckpt.model_config)
    prepare(model, QATConfig.with_bits(bits, 64, embeddings_min_bits=None), enabled=False)
    model.load_weights(list(ckpt.weights.items()))
    bundle = load_bundle(data_dir)
    batches = list(eval_batches(bundle.val, 4, 32, BATCHES))
    return eval_triple(model, batches, bundle.bytes_per_token["val"])


# --- measures ----------------------------------------------------------------------------


def test_basin_edge_interpolates_extrapolates_and_kappa():
    assert basin_edge([0, 0.5, 1.0], [0.0, 0.01, 0.09], 0.05) == (0.75, False)
    # A quadratic rise 0.01·α² that stays under the level: extrapolated exactly (α* = 3).
    a, extrap = basin_edge([0, 1.0, 1.5], [0.0, 0.01, 0.0225], 0.09)
    assert extrap and a == pytest.approx(3.0) and kappa(a) == pytest.approx(1 / 3)
    a, extrap = basin_edge([0, 1.0], [0.0, -0.001], 0.01)  # the loss never rises
    assert extrap and math.isinf(a) and kappa(a) == 0.0
    assert wall_slope([0, 0.5, 1.0, 1.5], [0, 0.0, 0.1, 0.4], 0.6) == pytest.approx(0.6)
    assert wall_slope([0, 1.0], [0, 0.001], 5.0) is None
    with pytest.raises(ValueError, match="eps must be > 0"):
        basin_edge([0, 1], [0, 1], 0.0)


def test_paired_se_by_hand():
    # Differences 1, 2, 3: mean 2, sample variance 1, SE = sqrt(1/3).
    assert paired_se([1.5, 3.0, 4.5], [0.5, 1.0, 1.5]) == pytest.approx(math.sqrt(1 / 3))
    assert paired_se([1.0], [0.0]) == 0.0


CAL = ((0.02, 0.0), (0.2, 0.5), (2.0, 0.8))  # (gap, share recovered): a made-up calibration


def test_calibration_points_pool_adjacent_violators_by_hand():
    rows = [
        {"gap": 0.1, "eps": 0.01, "recovered": 0.6},
        {"gap": 0.4, "eps": 0.01, "recovered": 0.2},  # violates 0.6: pooled with it
        {"gap": 1.6, "eps": 0.01, "recovered": 0.9},
        {"gap": 0.005, "eps": 0.01, "recovered": 5.0},  # inside ε: not a calibration point
        {"gap": 3.0, "eps": 0.01, "recovered": None},
    ]
    # the pool: share (0.6 + 0.2) / 2 at the geometric mean gap sqrt(0.1 * 0.4) = 0.2
    assert calibration_points(rows, share="recovered") == ((0.2, 0.4), (1.6, 0.9))


def test_expected_recovery_is_linear_in_log_gap_and_flat_beyond_the_ends():
    assert expected_recovery(0.001, CAL) == 0.0 and expected_recovery(50.0, CAL) == 0.8
    assert expected_recovery(0.2, CAL) == pytest.approx(0.5)
    assert expected_recovery(math.sqrt(0.2 * 2.0), CAL) == pytest.approx(0.65)  # log midpoint


def test_alternatives_move_every_layer_alike():
    two, four = QuantSpec("affine", 2, 64), QuantSpec("affine", 4, 64)
    alts = dict(alternatives([two, two, four]))  # named after the most common format
    assert list(alts) == ["affine3g64", "affine4g64", "affine2g32", "affine3g32"]
    assert alts["affine3g64"](four) == QuantSpec("affine", 5, 64)
    assert alts["affine3g32"](four) == QuantSpec("affine", 5, 32)
    assert [n for n, _ in alternatives([QuantSpec("affine", 6, 32)])] == ["affine8g32"]
    assert alternatives([QuantSpec("affine", 8, 64)]) == []
    assert alternatives([QuantSpec.for_mode("mxfp4")]) == []


def test_verdict_rules_on_constructed_measurements(monkeypatch):
    monkeypatch.setattr(rules, "CALIBRATION", CAL)
    base = {
        "gap": 0.2,
        "eps": 0.01,
        "float": {"loss": 3.0},
        "scan": {"kappa_hat": 3.0, "alpha_star": 0.33},
        "random": {"radius": 2.0, "rise_at_1": 0.001},
        "stochastic": {"loss": [1.0], "best_gap": 0.3, "gain_over_rtn": -0.1},
        "mixed": None,
        "formats": None,
    }
    v = verdict(base)  # 50% recovered leaves 0.1 nats, 3.3% of the float loss: QAT
    assert v["label"] == QAT_NEEDED and "recover 50%" in v["advice"] and "3.3%" in v["advice"]
    assert verdict({**base, "gap": 0.01})["label"] == PTQ_FINE  # at the level: fine
    v = verdict({**base, "gap": 0.03})  # QAT expected to win 8.8% of 0.03 < ε: not worth it
    assert v["label"] == PTQ_FINE and "not expected" in v["advice"]
    mixed = {"units": ["lm_head"], "layers": {"lm_head": "affine8g64"}, "extra_bits": 0.1}
    v = verdict({**base, "mixed": {**mixed, "gap": 0.005}})
    assert v["label"] == CHANGE_FORMAT and "lm_head (affine8g64)" in v["advice"]
    assert verdict({**base, "mixed": mixed})["label"] == QAT_NEEDED  # too dear: not evaluated
    # gap 1.0: ~71% recovered leaves ~0.29 nats (9.7% > 5%): change the format, to the
    # cheapest measured one expected within 5% after QAT (affine3g64: 0.3 -> ~4.5%)
    formats = [
        {"change": "affine3g64", "bits_per_weight": 3.5, "gap": 0.3},
        {"change": "affine4g64", "bits_per_weight": 4.5, "gap": 0.05},
        {"change": "affine2g32", "bits_per_weight": 3.0, "gap": 0.9},
    ]
    v = verdict({**base, "gap": 1.0, "formats": formats})
    assert v["label"] == CHANGE_FORMAT and "affine3g64 (3.50 bits/weight)" in v["advice"]
    worse = [{**f, "gap": 10 * f["gap"]} for f in formats]  # none is within 5%: the closest
    v = verdict({**base, "gap": 1.0, "formats": worse})
    assert v["label"] == CHANGE_FORMAT and "affine4g64" in v["advice"]
    assert "more bits" in verdict({**base, "gap": 1.0})["advice"]  # no formats measured
    assert not any("outside the calibrated" in r for r in verdict(base)["reasons"])
    assert any("outside the calibrated" in r for r in verdict({**base, "gap": 3.0})["reasons"])


def test_the_calibration_constants_are_the_saved_calibrations():
    saved = json.loads((ROOT / rules.CALIBRATION_SOURCE.replace(".md", ".json")).read_text())
    assert rules.CALIBRATION == calibration_points(saved["rows"])


# --- perturbations -----------------------------------------------------------------------


def test_stochastic_round_lands_on_a_neighbouring_grid_point_unbiased():
    spec = QuantSpec("affine", 2, 32)
    w = mx.random.normal((8, 64), key=mx.random.key(3))
    wg = group(w, 32)
    s, b = minmax_params(wg, 2)
    x = (wg - b) / s
    lo = dequantize_codes(mx.clip(mx.floor(x), 0, 3), s, b, w.dtype).reshape(w.shape)
    hi = dequantize_codes(mx.clip(mx.ceil(x), 0, 3), s, b, w.dtype).reshape(w.shape)
    sr = stochastic_round(w, spec, mx.random.key(0))
    assert mx.all((sr == lo) | (sr == hi)).item()
    rtn = fake_quantize(w, spec)
    assert mx.all((rtn == lo) | (rtn == hi)).item()  # the same grid as round-to-nearest
    assert mx.array_equal(sr, stochastic_round(w, spec, mx.random.key(0)))
    assert not mx.array_equal(sr, stochastic_round(w, spec, mx.random.key(1)))
    many = stochastic_round(mx.broadcast_to(w, (512, 8, 64)), spec, mx.random.key(2))
    step = mx.abs(s).reshape(8, 2, 1)
    err = mx.abs(group(many.mean(axis=0) - w, 32)) / step
    inside = (x >= 0) & (x <= 3)  # the grid's rule may leave an extreme a little outside
    assert mx.max(mx.where(inside, err, 0)).item() < 0.2  # 512 draws average to w (~5 SE)
    with pytest.raises(ValueError, match="not an affine format"):
        stochastic_round(w, QuantSpec("mxfp4", 4, 32), mx.random.key(0))


def test_random_direction_has_the_rounding_errors_group_norms():
    spec = QuantSpec("affine", 3, 32)
    w = mx.random.normal((4, 128), key=mx.random.key(5))
    q = fake_quantize(w, spec)
    xi = matched_random(w, q, 32, mx.random.key(6))
    norm = lambda a: mx.sqrt((group(a, 32) ** 2).sum(axis=-1))  # noqa: E731
    assert mx.allclose(norm(xi), norm(q - w), rtol=1e-5).item()
    assert not mx.allclose(xi, q - w).item()


def test_units_and_target_config():
    paths = ["model.embed_tokens", "model.layers.0.mlp.up_proj", "model.layers.0.attn.q_proj"]
    assert units_of(paths, "block") == {
        "model.embed_tokens": ["model.embed_tokens"],
        "model.layers.0": paths[1:],
    }
    assert list(units_of(paths, "layer")) == paths and units_of(paths, "off") == {}
    base = QATConfig.with_bits(2, 32, scale_dtype="float16", overrides={"lm_head": 8})
    own = target_config(base)
    assert (own.weights, own.embedding_spec) == (
        QuantSpec("affine", 2, 32),
        QuantSpec(bits=4, group_size=32),
    )
    t = target_config(base, bits=8)
    assert t.weights == QuantSpec("affine", 8, 32) and t.embedding_spec.bits == 8
    assert t.scale_dtype == "float16" and t.overrides["lm_head"].bits == 8  # rules kept
    assert target_config(base, embed_bits=2).embedding_spec == QuantSpec("affine", 2, 32)
    assert target_config(None, mode="mxfp4").weights == QuantSpec("mxfp4", 4, 32)


def test_diagnose_model_is_finite_and_restores_the_model(tiny_data_dir):  # noqa: F811
    mx.random.seed(0)
    model = model_from_config(preset_config("d2", VOCAB))
    prepare(model, QATConfig.with_bits(4), enabled=True)
    before = {p: layer["weight"] for p, layer in qat_layers(model)}
    layers = {p: (layer, layer.spec) for p, layer in qat_layers(model)}
    bundle = load_bundle(tiny_data_dir)
    batches = list(eval_batches(bundle.val, 4, 32, 2))
    st = DiagnoseSettings(**{**CHEAP, "attribution": "layer", "layer_alphas": (1.0,)})
    d = diagnose_model(model, batches, bundle.bytes_per_token["val"], layers, st)
    for p, layer in qat_layers(model):
        assert layer["weight"] is before[p] and layer.fake_quant  # weights and flags back
    numbers = [
        d["gap"],
        d["eps"],
        *d["scan"]["loss"],
        *d["random"]["mean"],
        *d["stochastic"]["loss"],
    ]
    numbers += [u["kappa_hat"] for u in d["layers"]]
    assert all(math.isfinite(x) for x in numbers)
    assert len(d["layers"]) == len(layers)  # one unit per layer
    json.dumps(d, allow_nan=False)


# --- the trained model -------------------------------------------------------------------


def test_verdict_says_qat_where_qat_then_pays_and_ptq_where_the_gap_is_small(
    float_run,
    qat_run,
    tiny_data_dir,  # noqa: F811
):
    """The verdict against its consequences, at 8 bits and at the run's own 2 bits throughout.

    Every loss here is measured independently of `diagnose` (`independent_triple`: a model
    prepared afresh at the format, on the same 8 validation batches). Where the verdict says
    "PTQ is fine", the float model's PTQ gap is within the verdict's level ε. Where it says "QAT
    needed", the gap exceeds ε, and the QAT run at that format (the same budget, its last 75
    steps in QAT) ends at least 20% of the gap and 0.01 nats (the level's floor) below the
    twin's PTQ: QAT pays. The verdicts must differ between the two widths (8 bits fine, 2 bits
    not), and at 2 bits the scan puts the PTQ point outside the basin (κ̂ > 1)."""
    st = DiagnoseSettings(**CHEAP)
    labels = {}
    for bits in (8, 2):
        # 2 bits: the run's own format (no --bits); 8 bits everywhere, embeddings included
        d = diagnose(float_run, bits=None if bits == 2 else 8, eval_batches=BATCHES, settings=st)
        assert d["format"]["weights"] == d["format"]["embeddings"] == f"affine{bits}g64"
        ev = independent_triple(float_run, tiny_data_dir, bits)
        scan = d["scan"]
        assert scan["alphas"][0] == 0.0
        assert scan["loss"][0] == pytest.approx(ev["fp"]["loss"], rel=1e-6)  # α = 0: float
        at1 = scan["loss"][scan["alphas"].index(1.0)]
        assert at1 == d["ptq"]["loss"] == pytest.approx(ev["ptq"]["loss"], rel=1e-6)  # α = 1
        gap = ev["ptq"]["loss"] - ev["fp"]["loss"]
        labels[bits] = d["verdict"]["label"]
        if bits == 2:  # the other formats "change the format" chooses from: RTN there too
            at3 = {f["change"]: f for f in d["formats"]}["affine3g64"]["loss"]
            assert at3 == pytest.approx(
                independent_triple(float_run, tiny_data_dir, 3)["ptq"]["loss"], rel=1e-6
            )
        if labels[bits] == PTQ_FINE:
            assert gap <= d["eps"], (bits, gap, d["eps"])
        else:
            assert labels[bits] == QAT_NEEDED, (bits, d["verdict"])
            assert gap > d["eps"], (bits, gap, d["eps"])
            assert bits == 2, "QAT needed at 8 bits: the fixture has no 8-bit QAT run"
            qat = independent_triple(qat_run, tiny_data_dir, bits)["ptq"]["loss"]
            gained = ev["ptq"]["loss"] - qat  # the QAT run's deployable weights vs the twin's
            assert gained >= max(0.2 * gap, 0.01), (gained, gap)
            assert scan["kappa_hat"] > 1
    assert labels == {8: PTQ_FINE, 2: QAT_NEEDED}


def test_cli_reproducible_json_table_and_plot_fallback(float_run, tmp_path, capsys, monkeypatch):
    outs = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    assert diagnose_main([str(float_run), *CHEAP_FLAGS, "--out", str(outs[0])]) == 0
    table = capsys.readouterr().out
    assert "basin edge α*" in table and "verdict: " in table and "model.layers.0" in table
    assert (outs[0] / "diagnose.png").is_file() or "pip install" in capsys.readouterr().err

    def no_matplotlib():
        raise ImportError("plotting needs matplotlib: pip install 'mlx_qat[plot]'")

    monkeypatch.setattr(report, "pyplot", no_matplotlib)
    assert diagnose_main([str(float_run), *CHEAP_FLAGS, "--out", str(outs[1])]) == 0
    assert "pip install 'mlx_qat[plot]'" in capsys.readouterr().err
    assert not (outs[1] / "diagnose.png").exists()
    text = [(o / "diagnose.json").read_text() for o in outs[:2]]
    assert text[0] == text[1]  # same seed: the same numbers, to the last bit
    seed1 = ["--seed", "1", "--no-plot", "--out", str(outs[2])]
    assert diagnose_main([str(float_run), *CHEAP_FLAGS, *seed1]) == 0
    a, c = json.loads(text[0]), json.loads((outs[2] / "diagnose.json").read_text())
    assert a["scan"] == c["scan"] and a["random"]["loss"] != c["random"]["loss"]
    resolved = yaml.safe_load((outs[0] / "diagnose.yaml").read_text())
    assert resolved["seed"] == 0 and resolved["random_scales"] == [0.5, 1.0, 2.0]
    assert resolved["path"] == str(float_run)


def test_mlx_lm_model_dir(tiny_data_dir, tmp_path):  # noqa: F811
    from mlx_lm.utils import save_config, save_model

    mx.random.seed(0)
    cfg = preset_config("d2", VOCAB)
    model = model_from_config(cfg)
    mx.eval(model.parameters())
    save_model(tmp_path / "m", model)
    save_config(cfg, tmp_path / "m" / "config.json")
    d = diagnose(
        tmp_path / "m",
        data=str(tiny_data_dir),
        bits=4,
        eval_batches=2,
        batch_size=4,
        seq_len=32,
        settings=DiagnoseSettings(**{**CHEAP, "attribution": "off"}),
    )
    assert d["source"]["kind"] == "mlx-lm" and d["layers"] == []
    assert d["format"]["weights"] == "affine4g64" and len(d["covered"]) == 15
    assert math.isfinite(d["gap"]) and d["verdict"]["label"] in (
        PTQ_FINE,
        QAT_NEEDED,
        CHANGE_FORMAT,
    )
    with pytest.raises(ValueError, match="no data recorded; pass --data"):
        diagnose(tmp_path / "m", bits=4)


def test_only_a_fake_quant_checkpoint_is_warned_about(tiny_data_dir, tmp_path, caplog):  # noqa: F811
    """A QAT-phase checkpoint holds latent weights (warned about); an FP twin's (the QAT
    phase with fake quant off, `ablate_qat`) holds a float model like any FP checkpoint."""
    from mlx_qat.diagnose.source import load_source

    for name, kw in (("qat", {}), ("twin", {"ablate_qat": True})):
        train(tiny_config(tiny_data_dir, tmp_path / name, tokens=8 * 128, qat_fraction=0.5, **kw))
        caplog.clear()
        load_source(tmp_path / name)
        warned = any("a QAT-phase checkpoint" in r.getMessage() for r in caplog.records)
        assert warned == (name == "qat"), name
