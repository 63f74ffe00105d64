"""Sweep grids and trunk planning: which runs exist, which share an FP trunk, where each
branches, and what the trunk must save — checked against step counts computed by hand."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from test_train_fixtures import tiny_data_dir  # noqa: F401

from mlx_qat.sweep.grid import load_sweep
from mlx_qat.sweep.trunks import plan_trunks

TPS = 4 * 32  # batch 4 x 32 tokens


def sweep_file(tmp_path, grids, **top) -> str:
    doc = {
        "out": str(tmp_path / "sweep"),
        "data": str(tmp_path / "data"),
        "train": {"batch_size": 4, "seq_len": 32, "vocab_size": 512, "cooldown_fraction": 0.2},
        "grids": grids,
        **top,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_grid_is_the_product_and_shared_points_appear_once(tmp_path):
    grids = [
        {"name": "a", "models": ["d2", "d4"], "tokens": [1e5, "2e5"], "bits": [2, 4],
         "fractions": [0.1, "auto"], "seeds": [0, 1]},
        {"name": "b", "models": ["d2"], "tokens": [1e5], "bits": [4], "fractions": [0.1],
         "pipelines": ["fused", "classic"]},
    ]  # fmt: skip
    sw = load_sweep(sweep_file(tmp_path, grids))
    assert len(sw.points) == 2 * 2 * 2 * 2 * 2 + 1  # b's fused point is one of a's
    shared = [p for p in sw.points if p.groups == ("a", "b")]
    assert len(shared) == 1 and shared[0].pipeline == "fused" and shared[0].seed == 0
    names = [p.name for p in sw.points]
    assert len(set(names)) == len(names) and "d2_D100000_b4_f0.1_classic_s0" in names
    cfg = sw.config(shared[0])
    assert (cfg.preset, cfg.tokens, cfg.bits, cfg.qat_fraction) == ("d2", 100_000, 4, 0.1)
    assert cfg.batch_size == 4 and cfg.out.endswith("runs/d2_D100000_b4_f0.1_fused_s0")


@pytest.mark.parametrize(
    "grids, train, match",
    [
        ([{"models": ["d2"], "tokens": [1e5], "bits": [4], "fractions": [1.5]}], {}, "qat_fraction"),
        ([{"models": ["d2"], "tokens": [1e5], "bits": [4]}], {}, "no 'fractions'"),
        ([{"models": ["d2"], "tokens": [1e5], "bits": [4], "fractions": [0.1], "lr": 1}], {}, "unknown key"),
        ([{"models": ["d2"], "tokens": [1e5], "bits": [4], "fractions": [0.1]}], {"bits": 3}, "grid decides"),
        ([{"models": ["d2"], "tokens": [1e5], "bits": [4], "fractions": [0.1]}], {"lrr": 3}, "lrr"),
    ],
)  # fmt: skip
def test_bad_sweep_files_name_the_key(tmp_path, grids, train, match):
    path = sweep_file(tmp_path, grids)
    doc = yaml.safe_load(open(path))
    doc["train"].update(train)
    open(path, "w").write(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match=match):
        load_sweep(path)


@pytest.mark.parametrize(
    "axis, value, match",
    [
        ("bits", "two", "grids[0]: bits: 'two' is not a whole number"),
        ("bits", 4.5, "grids[0]: bits: 4.5 is not a whole number"),
        ("seeds", "x", "grids[0]: seeds: 'x' is not a whole number"),
        ("bits", 7, "grids[0]: run d2_D100000_b7_f0.1_fused_s0: QuantSpec(bits=7)"),
    ],
)
def test_bad_grid_values_are_one_line_errors_naming_file_and_key(
    tmp_path, capsys, axis, value, match
):
    from mlx_qat.cli.sweep import main as sweep_main

    grid = {"models": ["d2"], "tokens": [1e5], "bits": [4], "fractions": [0.1], axis: [value]}
    path = sweep_file(tmp_path, [grid])
    assert sweep_main([path, "--dry-run"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mlx_qat.sweep: error: {path}: {match}") and "\n" not in err


def test_the_fp_anchor_trains_once_whatever_the_bit_widths(tmp_path, capsys, tiny_data_dir):  # noqa: F811
    """bits [2, 4]: one FP anchor per model, budget and seed, not one per bit width (an FP
    run trains no grid: two would be the same run, trained and fitted twice)."""
    from mlx_qat.cli.sweep import main as sweep_main

    grids = [{"models": ["d2"], "tokens": [8 * TPS], "bits": [2, 4], "fractions": [0.5]}]
    path = sweep_file(tmp_path, grids, data=str(tiny_data_dir))
    trunks = plan_trunks(load_sweep(path))
    fp = [m.point.name for t in trunks for m in t.members if m.point.fraction == 0]
    assert fp == ["d2_D1024_b2_f0_fused_s0"]
    assert sweep_main([path, "--dry-run"]) == 0
    assert ": 3 runs in 2 trunks (0 done, 3 to run)" in capsys.readouterr().out


def test_trunks_branch_points_and_saved_checkpoints(tmp_path):
    D = 200 * TPS  # 200 steps
    grids = [
        {"models": ["d2"], "tokens": [D], "bits": [4], "fractions": [0.1, 0.3, 0.5]},
        {"models": ["d2"], "tokens": [D], "bits": [4], "fractions": [0.3], "pipelines": ["classic"]},
        {"models": ["d2"], "tokens": [D], "bits": [2], "fractions": [0.3]},
    ]  # fmt: skip
    trunks = plan_trunks(load_sweep(sweep_file(tmp_path, grids)))
    by_bits = {t.root.point.bits: t for t in trunks}
    assert sorted(by_bits) == [2, 4] and len(trunks) == 2  # bits differ: separate trunks
    t = by_bits[4]
    T, c = 200, 0.2
    fp = {f: T - round(f * T) for f in (0.1, 0.3, 0.5)}  # 180, 140, 100
    root = t.root
    assert (root.point.fraction, root.point.pipeline, root.branch) == (0.1, "fused", fp[0.1])
    branch = {(m.point.fraction, m.point.pipeline): m.branch for m in t.members}
    assert branch[(0.3, "fused")] == fp[0.3] and branch[(0.5, "fused")] == fp[0.5]
    assert branch[(0.3, "classic")] == fp[0.3] - round(c * fp[0.3])  # its FP cooldown starts
    assert branch[(0.0, "fused")] == T - round(c * T)  # the FP anchor's final decay starts
    assert t.save_steps == sorted(
        {fp[0.3], fp[0.5], fp[0.3] - round(c * fp[0.3]), T - round(c * T)}
    )
    # A fused branch trains only its QAT phase; the trunk trains everything once.
    assert t.tokens_trained() == TPS * (T + (T - fp[0.3]) + (T - fp[0.5])
                                        + round(c * fp[0.3]) + (T - fp[0.3]) + round(c * T))  # fmt: skip
    assert t.tokens_independent() == 5 * T * TPS
    cfgs = {c.out.rsplit("/", 1)[1]: c for c in t.configs()}
    rootcfg = cfgs[root.point.name]
    assert rootcfg.save_steps == t.save_steps and rootcfg.branch_from is None
    b03 = cfgs["d2_D25600_b4_f0.3_fused_s0"]
    assert b03.branch_from == f"{rootcfg.out}/checkpoints/step_{fp[0.3]:08d}"


def test_auto_fraction_and_qat_from_scratch(tmp_path):
    D = 40_000 * TPS  # S = D / bytes of d2 at 4 bits ~ 60: auto f ~ 0.19
    grids = [{"models": ["d2"], "tokens": [D], "bits": [4], "fractions": ["auto", 1.0]}]
    (t,) = plan_trunks(load_sweep(sweep_file(tmp_path, grids, fp_anchor=False)))
    auto = next(m for m in t.members if m.point.fraction == "auto")
    assert auto.plan.qat_steps == round(auto.plan.f_hat * 40_000) > 0
    assert math.isclose(auto.plan.f_hat, math.exp(-6.7297 / math.log(auto.plan.tokens_per_byte)))
    scratch = next(m for m in t.members if m.point.fraction == 1.0)
    assert scratch.branch == 0 and scratch.config.branch_from is None
    assert [c.branch_from for c in t.configs() if c.qat_fraction == 1.0] == [None]


@pytest.mark.parametrize("name", ["sweep_tiny", "sweep_mac", "sweep_tiny_v2"])
def test_shipped_sweeps_span_what_the_study_needs(name):
    """≥ 3 sizes, bits 2 and 4, ≥ 5 QAT fractions per (size, budget, bits), S over ≥ 1.5
    decades, fused and classic, and (tiny) a memory-matched pair of bit widths."""
    from collections import defaultdict

    from test_train_fixtures import REPO

    sweep = load_sweep(REPO / "mlx_qat" / "configs" / f"{name}.yaml")
    members = [m for t in plan_trunks(sweep) for m in t.members]
    assert len({m.point.model.name for m in members}) >= 3
    assert {2, 4} <= {m.point.bits for m in members}
    fractions = defaultdict(set)
    for m in members:
        if m.point.pipeline == "fused" and m.point.fraction:
            fractions[(m.point.model.name, m.point.tokens, m.point.bits)].add(m.point.fraction)
    assert min(len(v) for v in fractions.values()) >= 5
    S = [m.plan.tokens_per_byte for m in members]
    assert math.log10(max(S) / min(S)) >= 1.5
    assert {"fused", "classic"} <= {m.point.pipeline for m in members}
    if name == "sweep_tiny":  # l2 at 4 bits and l4 at 2 bits hold the same parameter bytes
        pb = {(m.point.model.name, m.point.bits): m.plan.param_bytes for m in members}
        assert pb[("l2", 4)] == pytest.approx(pb[("l4", 2)], rel=0.02)


def test_fixed_cooldown_trunk_is_the_fp_anchor_and_twins_cost_their_qat_phase(tmp_path):
    """cooldown_mode fixed: every run has the f = 0 run's LR, so the FP anchor is the trunk
    (it trains the whole schedule once) and a fused run branches at its switch even inside
    the decay; each float twin costs its run's QAT steps again (from the run's switch)."""
    D, T, c = 200 * TPS, 200, 0.2
    grids = [
        {"models": ["d2"], "tokens": [D], "bits": [4], "fractions": [0.1, 0.3]},
        {"models": ["d2"], "tokens": [D], "bits": [4], "fractions": [0.3], "pipelines": ["classic"]},
    ]  # fmt: skip
    path = sweep_file(tmp_path, grids, fp_twins=True)
    doc = yaml.safe_load(open(path))
    doc["train"]["cooldown_mode"] = "fixed"
    open(path, "w").write(yaml.safe_dump(doc))
    (t,) = plan_trunks(load_sweep(path))
    assert (t.root.point.fraction, t.root.branch) == (0.0, T)  # the anchor: no cooldown left out
    branch = {(m.point.fraction, m.point.pipeline): m.branch for m in t.members}
    assert branch[(0.1, "fused")] == 180  # T_fp = 180 > T - round(c·T) = 160: mid-decay
    assert branch[(0.3, "fused")] == 140
    assert branch[(0.3, "classic")] == 140 - round(c * 140)  # 112: its own FP cooldown
    assert t.save_steps == [112, 140, 180]
    twins = {m.point.name: m.twin_tokens // TPS for m in t.members}
    assert sorted(twins.values()) == [0, 20, 60, 60]  # the anchor has none
    # anchor 200 + fused 20 + fused 60 + classic (200 - 112) + the three twins 20 + 60 + 60
    assert t.tokens_trained() == TPS * (200 + 20 + 60 + 88 + 140)
    assert all(cfg.fp_twin for cfg in t.configs())


def test_sweep_tiny_v2_separates_qat_from_the_cooldown():
    """Issue #27 item 1: one schedule for every fraction (fixed cooldown), float twins, sizes
    over >= 10x in N, fractions 0.025-0.3, both pipelines at 2 and 4 bits, a second seed at
    the largest budget; the largest FP-only anchor is the trunk of its own run."""
    from test_train_fixtures import REPO

    sweep = load_sweep(REPO / "mlx_qat" / "configs" / "sweep_tiny_v2.yaml")
    assert sweep.fp_twins and sweep.train["cooldown_mode"] == "fixed"
    members = [m for t in plan_trunks(sweep) for m in t.members]
    N = [m.plan.n_params for m in members]
    assert max(N) / min(N) >= 10

    # >= 2 FP-only anchors above the largest QAT size in the QAT sizes' own shape (width):
    # with another shape only, the law's size term missed the held-out size (sweep_tiny_v2)
    def width(m):
        return json.loads((REPO / m.point.model.model_config).read_text())["hidden_size"]

    qat_sizes = [m for m in members if 0 < m.plan.qat_steps]
    big = [m for m in members if m.plan.n_params > max(q.plan.n_params for q in qat_sizes)]
    assert all(m.plan.qat_steps == 0 for m in big)
    assert len({m.plan.n_params for m in big if width(m) in {width(q) for q in qat_sizes}}) >= 2
    qat = [m for m in members if 0 < m.plan.qat_steps < m.plan.total_steps]
    assert all(m.config.fp_twin for m in qat)
    fused = {float(m.point.fraction) for m in qat if m.point.pipeline == "fused"}
    assert min(fused) == 0.025 and max(fused) == 0.3
    assert {(m.point.pipeline, m.point.bits) for m in qat} >= {
        ("fused", 2),
        ("fused", 4),
        ("classic", 2),
        ("classic", 4),
    }
    largest = max(m.point.tokens for m in qat)
    assert {m.point.seed for m in qat if m.point.tokens == largest} == {0, 1}
    # fixed cooldown: all fused runs of one (size, budget) share the f = 0 run's LR exactly
    from mlx_qat.train.schedules import lr_curve

    by = {}
    for m in members:
        if m.point.pipeline == "fused" and m.point.model.name == "l1" and m.point.seed == 0:
            by.setdefault(m.point.tokens, set()).add(tuple(lr_curve(m.plan)))
    assert by and all(len(curves) == 1 for curves in by.values())
