"""benchmarks/bench_pretrained.py's bookkeeping (no model, no training): the json rows' `method`
for each method string, refused names, the share of the RTN gap, and where each method's
results live (per width and seed; float and float_ce shared by every width)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "bench_pretrained", ROOT / "benchmarks" / "bench_pretrained.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _args(**kw):
    base = dict(dwq_lr=1e-5, qat_lr=2e-5, temperature=2.0, work=Path("/w"), left_out=None,
                group_size=64, bits=3, seed=0, float_dir=None)  # fmt: skip
    return argparse.Namespace(**{**base, **kw})


@pytest.mark.parametrize(
    "name, family",
    [
        ("float", "float"),
        ("rtn", "rtn"),
        ("dwq", "dwq"),
        ("dwq~1e-4+same", "dwq"),
        ("grid~1e-4", "grid_only"),
        ("grid+trainer", "grid_only"),
        ("qat_kd~1e-5:1e-4+fixed+adam+split", "qat_kd"),
        ("qat_kd@1.5", "qat_kd"),
        ("qat_ce~1e-4", "qat_ce"),
        ("qat_kd~0:1e-4+fixed+adam+split+gridfirst=0.5", "qat_kd"),
        ("float_ce", "float_ce"),
        ("float_ce~1e-4+adam", "float_ce"),
    ],
)
def test_family(bench, name, family):
    assert bench.family(name, _args()) == family


def test_float_ce_settings(bench):
    assert bench.parse_method("float_ce", _args()) == {
        "kind": "float_ce", "objective": "ce", "lr": 2e-5, "adam": False}  # fmt: skip
    assert bench.parse_method("float_ce~1e-4+adam", _args())["lr"] == 1e-4


def test_grid_first_settings(bench, monkeypatch):
    """`+gridfirst=F` passes --grid-first-fraction F; without it the settings are as before."""
    cmds = []
    monkeypatch.setattr(bench, "sh", lambda cmd, log: cmds.append([str(c) for c in cmd]))
    args = _args(tokens=1000, batch_size=4, seq_len=32)
    bench.run_trainer(args, "qat_kd~0:1e-4+fixed+adam+split+gridfirst=0.5")
    bench.run_trainer(args, "qat_kd~0:1e-4+fixed+adam+split")
    first, plain = cmds[0], cmds[2]  # (each run's train, then convert)
    assert first[first.index("--grid-first-fraction") + 1] == "0.5"
    assert first[first.index("--weight-lr-scale") + 1] == "0.0"
    assert "--grid-first-fraction" not in plain
    p = bench.parse_method("qat_kd~1e-5:1e-4+fixed+split+gridfirst=0.25", _args())
    assert (p["grid_first"], p["split"], p["lr"], p["scale_lr"]) == (0.25, True, 1e-5, 1e-4)
    assert bench.parse_method("qat_kd~1e-5:1e-4+fixed+split", _args())["grid_first"] == 0.0
    assert "first 0.25 of the steps" in bench.describe("qat_kd+gridfirst=0.25", _args())


@pytest.mark.parametrize(
    "name",
    ["dwqq", "float~1e-4", "rtn+adam", "float_ce+fixed", "dwq:1", "grid+gridfirst=0.5",
     "qat_kd+gridfirst=1.5", "qat_kd+gridfirst=x", "qat_kd+gridfirst=0.1+gridfirst=0.2"],
)  # fmt: skip
def test_refused(bench, name):
    with pytest.raises(SystemExit):
        bench.parse_method(name, _args())


def test_recovered(bench):
    fp, rtn = {"test": 2.0, "left_out": 3.0}, {"test": 2.5, "left_out": 3.0}
    assert bench.recovered(rtn, fp, {"test": 2.1}, "test") == pytest.approx(0.8)
    assert bench.recovered(rtn, fp, {"test": 1.9}, "test") == pytest.approx(1.2)
    assert bench.recovered(rtn, fp, {"left_out": 2.9}, "left_out") is None  # no gap
    assert bench.recovered(rtn, fp, {"left_out": None}, "left_out") is None
    assert bench.recovered(None, fp, {"test": 2.1}, "test") is None


def test_layout(bench):
    a = _args(left_out="sotu", bits=4, seed=1)
    w = Path("/w/without_sotu")
    assert bench.model_dir(a, "float") == Path("/w/float")
    assert bench.home(a, "float") == w
    assert bench.model_dir(a, "rtn") == w / "4bit_g64" / "rtn"
    assert bench.model_dir(a, "dwq~1e-4") == w / "4bit_g64" / "seed1" / "dwq~1e-4"
    assert bench.model_dir(a, "float_ce~1e-4") == w / "seed1" / "float_ce~1e-4"
    assert bench.data_dir(a) == w / "data" and bench.left_out_dir(a) == w / "left_out"
    b = _args(float_dir=Path("/m"))
    assert bench.model_dir(b, "float") == Path("/m") and bench.data_dir(b) == Path("/w/all/data")


def test_rows_of_a_lost_work_dir_are_carried_under_the_same_protocol(bench, tmp_path):
    settings = dict(source="/m", corpora=["a", "b"], left_out="b", tokens=100, batch_size=4,
                    seq_len=8, dwq_lr=1e-5, qat_lr=2e-5, temperature=2.0, val_batches=1,
                    test_batches=1)  # fmt: skip
    args = _args(**settings, work=tmp_path, bits=[3], seeds=[0], report_only=True,
                 methods=["float", "rtn", "dwq~1e-4"])  # fmt: skip

    def row(name, seed, test):
        return {"name": name, "bits": 3, "seed": seed, "val": test, "test": test,
                "left_out": None, "test_recovered": 0.123}  # fmt: skip

    old = [row("float", None, 2.0), row("rtn", None, 3.0), row("dwq~1e-4", 0, 2.25)]
    before = {"args": settings, "rows": old}
    rows = bench.collect(args, bench.carried_rows(args, before))
    assert [r["name"] for r in rows] == ["float", "rtn", "dwq~1e-4"]
    assert rows[2]["test_recovered"] == pytest.approx(0.75)  # recomputed: (3 - 2.25) / (3 - 2)
    # another protocol (here: tokens) carries nothing, and --work's own results come first
    assert bench.carried_rows(args, {"args": {**settings, "tokens": 200}, "rows": old}) == {}
    assert bench.collect(args, {}) == []
