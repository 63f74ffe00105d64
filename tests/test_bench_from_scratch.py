"""benchmarks/bench_from_scratch.py (issue #24): the micro version end to end — search at one
width over 2 quantizers, final stage default vs one recipe on a few thousand tokens — the json
rows' schema, fp/ptq/qat read back independently from each run's result.json, and the bracket
rule on a synthetic table."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location(
        "bench_from_scratch", ROOT / "benchmarks" / "bench_from_scratch.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_bracket_edge_flag():
    b = _bench()
    table = [{"qlr": 0.01, "loss": 3.5}, {"qlr": 0.03, "loss": 3.4}, {"qlr": 0.1, "loss": 3.3}]
    assert "high end" in b.bracket_flags(table, "qlr", [0.01, 0.03, 0.1])
    table[0]["loss"] = 3.2
    assert "low end" in b.bracket_flags(table, "qlr", [0.01, 0.03, 0.1])
    table[0]["loss"], table[1]["loss"] = 3.5, 3.1
    assert b.bracket_flags(table, "qlr", [0.01, 0.03, 0.1]) is None


def test_recipe_name_round_trip():
    b = _bench()
    for r in (b.DEFAULT, b.Recipe("la_fixed", "kd", 2.0, 0.01, 0.5), b.Recipe("lsq", "mix")):
        assert b.Recipe.parse(r.name) == r
    with pytest.raises(ValueError, match="QUANT"):
        b.Recipe.parse("nope.ce.q0.03.f1")


def test_minmax_is_a_recipe_not_a_searched_quantizer():
    b = _bench()
    assert [r.quantizer for r in b.search_axes(2, b.DEFAULT)[0][1]] == ["la", "la_fixed", "lsq"]
    assert b.Recipe.parse("mm.ce.q0.03.f1").settings()["quantizer"] == "minmax"


def _loss(d: dict, *keys: str) -> float:
    for k in keys:
        d = d[k]
    return d["loss"]


@pytest.mark.slow  # ~8 small trainings: 53-97 s here
def test_micro_end_to_end(tiny_data, tmp_path):
    b = _bench()
    out = tmp_path / "results" / "gap"
    argv = ["--bits", "4", "--search-seeds", "0", "--final-seeds", "0", "--axes", "quantizer",
            "--recipe", "4=la.kd.T2.q0.03.f1", "--tokens", "16384", "--auto-fraction", "0.3",
            "--final-eval-batches", "2", "--eval-every", "0", "--data", str(tiny_data.path),
            "--runs", str(tmp_path / "runs"), "--out", str(out)]  # fmt: skip
    b.main(argv)
    data = json.loads(out.with_suffix(".json").read_text())
    assert out.with_suffix(".md").is_file()
    for key in ("command", "date", "machine", "search", "final", "spread"):
        assert key in data
    assert "load_avg_1m" in data["machine"] and "mlx" in data["machine"]
    # search: one width, both quantizers tried, a winner among them
    w = data["search"]["4"]
    assert [r["recipe"] for r in w["table"]] == ["la.ce.q0.03.f1", "la_fixed.ce.q0.03.f1"]
    assert w["winner"] == min(w["table"], key=lambda r: r["loss"])["recipe"]
    # the search's QAT loss is the branch run's own validation QAT loss
    for r in w["table"]:
        q = r["recipe"].split(".")[0]
        res = json.loads(
            (tmp_path / "runs/search/b4/s0" / q / r["recipe"] / "result.json").read_text()
        )
        assert r["loss"] == _loss(res, "eval", "qat")
    # final: default and the given recipe, rows with the schema
    rows = data["final"]
    assert {r["recipe"] for r in rows} == {"la.ce.q0.03.f1", "la.kd.T2.q0.03.f1"}
    for r in rows:
        assert {"bits", "seed", "recipe", "fp", "ptq", "qat"} <= set(r)
        assert (r["bits"], r["seed"]) == (4, 0)
        res = json.loads((tmp_path / "runs/final/b4/s0" / r["recipe"] / "result.json").read_text())
        assert r["fp"] == _loss(res, "twin", "test", "fp")
        assert r["ptq"] == _loss(res, "twin", "test", "ptq")
        assert r["qat"] == _loss(res, "test", "qat")
    assert {s["label"] for s in data["spread"]} == {"default", "chosen"}


def test_search_from_earlier_slices(tmp_path):
    """`--search-from`: the final stage takes the searches of earlier invocations, by width."""
    b = _bench()

    def slice_json(name, widths):
        row = {"axis": "quantizer", "recipe": "la.ce.q0.03.f1", "loss": 3.6, "gap_pct": 3.2}
        search = {str(w): {"table": [{**row, "bits": w}], "winner": f"la.ce.q0.09.f{w}",
                           "flags": []} for w in widths}  # fmt: skip
        f = tmp_path / name
        f.write_text(json.dumps({"command": f"cmd {name}", "date": "d", "wall_s": 60.0 * len(widths),
                                 "trained_tokens": 10, "search": search}))  # fmt: skip
        return f

    files = [slice_json("b2.json", [2]), slice_json("b34.json", [3, 4])]
    search, sources = b.searches_from(files, [4, 3, 2])
    assert list(search) == [4, 3, 2]
    assert [search[w]["winner"] for w in (4, 3, 2)] == ["la.ce.q0.09.f4", "la.ce.q0.09.f3",
                                                        "la.ce.q0.09.f2"]  # fmt: skip
    assert [(s["file"], s["bits"], s["wall_s"]) for s in sources] == [
        ("b2.json", "2", 60.0), ("b34.json", "4/3", 120.0)]  # fmt: skip
    assert list(b.searches_from(files, [3])[0]) == [3]
    files[0].write_text(json.dumps({"command": "c", "final": []}))
    with pytest.raises(SystemExit, match="no search"):
        b.searches_from(files, [2])
