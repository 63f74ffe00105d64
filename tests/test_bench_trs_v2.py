"""benchmarks/bench_trs_v2.py: the chosen-on-validation logic and the bracket-edge flag on a
synthetic table, the bracket's extension, and the micro run end to end (schema; the share of
the gap recovered recomputed from the saved losses; the embedding left in float)."""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path

import pytest
from test_convert_fixtures import tiny_data  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "bench_trs_v2", ROOT / "benchmarks" / "bench_trs_v2.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(arm, seed, val, test, **kw):
    return {"arm": arm, "bits": 2, "seed": seed, **kw, "val": {"qat": val},
            "test": {"qat": test, "recovered": None}}  # fmt: skip


def test_choose_on_validation_not_test(bench):
    # lr 1e-3 has the lower mean validation loss (seed 1's 5.0 beats lr 3e-3's mean), though
    # lr 3e-3 has the lower test loss and seed 0's lower validation loss: chosen on validation
    rows = [
        _row("schedule", 0, 4.30, 4.50, lr=1e-3),
        _row("schedule", 1, 4.00, 4.50, lr=1e-3),
        _row("schedule", 0, 4.20, 4.00, lr=3e-3),
        _row("schedule", 1, 4.20, 4.00, lr=3e-3),
        _row("schedule", 0, 4.50, 4.10, lr=3e-4),
        _row("schedule", 1, 4.50, 4.10, lr=3e-4),
    ]
    c = bench.choose(rows, "schedule", 2, ("lr",))
    assert c["setting"] == {"lr": 1e-3}
    assert c["val"] == pytest.approx(statistics.fmean([4.30, 4.00]))
    assert c["test"] == {0: 4.50, 1: 4.50}
    assert c["at_edge"] == {"lr": False}  # 3e-4 < 1e-3 < 3e-3: inside the bracket
    # drop the lower end: 1e-3 is now the lowest LR tried, at the bracket's edge
    c = bench.choose([r for r in rows if r["lr"] != 3e-4], "schedule", 2, ("lr",))
    assert c["setting"] == {"lr": 1e-3} and c["at_edge"] == {"lr": True}


def test_choose_two_keys_edge_per_key(bench):
    rows = [_row("trs", 0, 4.0 + 0.01 * i + 0.1 * j, 4.0, lam=lam, eta=eta)
            for i, lam in enumerate([2.5e-3, 1e-3, 5e-3]) for j, eta in enumerate([1e-3, 1e-2])]  # fmt: skip
    c = bench.choose(rows, "trs", 2, ("lam", "eta"))
    assert c["setting"] == {"lam": 2.5e-3, "eta": 1e-3}
    assert c["at_edge"] == {"lam": False, "eta": True}
    assert bench.choose(rows, "trs", 3, ("lam", "eta")) is None


def test_extension(bench):
    assert bench.extension([1e-3, 3e-3], 1e-3) == pytest.approx(1e-3 / 3)
    assert bench.extension([1e-3, 3e-3], 3e-3) == pytest.approx(1e-2)
    assert bench.extension([1e-3, 2e-3, 3e-3], 2e-3) is None


def test_dry_run_cost(bench, capsys):
    bench.main(["--dry-run"])
    text = capsys.readouterr().out
    cost = json.loads(text[: text.rindex("}") + 1])
    # 2 bits x 2 seeds x (2 LRs + 1 extension + 3 lambdas x 2 etas) runs of 1000 x 8 x 128
    assert cost["qat_runs_max"] == 2 * 2 * (3 + 6)
    assert cost["qat_tokens_per_run"] == 1000 * 8 * 128


def test_micro_run(bench, tmp_path, tiny_data):  # noqa: F811  (tiny_data: the fixture)
    bench.main(["--micro", "--runs", str(tmp_path), "--data", str(tiny_data.path)])
    p = json.loads((tmp_path / "trs_v2.json").read_text())
    assert {"command", "rows", "summary", "cost_estimate", "machine"} <= set(p)
    assert (tmp_path / "trs_v2.md").is_file()
    arms = {(r["arm"], r["lr"]) for r in p["rows"]}
    # 1e-3, 3e-3 and one extension past the winner, each at the chosen U0 for TRS
    assert len({lr for a, lr in arms if a == "schedule"}) == 3
    s = p["summary"]["2"]
    assert s["trs"]["setting"]["eta"] == pytest.approx(s["schedule"]["setting"]["lr"])
    for r in p["rows"]:
        t = r["test"]
        assert t["recovered"] == pytest.approx((t["ptq"] - t["qat"]) / (t["ptq"] - t["fp"]))
        assert r["val"]["qat"] > 0
    # chosen = the lowest mean validation loss among the schedule rows
    sched = [r for r in p["rows"] if r["arm"] == "schedule"]
    assert s["schedule"]["setting"]["lr"] == min(sched, key=lambda r: r["val"]["qat"])["lr"]
    # embedding/head left in float: no quantizer parameters for it in the checkpoint
    import mlx.core as mx

    ck = sorted(Path(p["rows"][-1]["dir"]).glob("checkpoints/step_*"))[-1]
    keys = mx.load(str(ck / "model.safetensors")).keys()
    assert "model.embed_tokens.weight" in keys
    assert not [k for k in keys if k.startswith("model.embed_tokens.quantizer")]
    assert [k for k in keys if ".quantizer." in k]
    # a second invocation resumes: every run is read back from rows.jsonl, none trained again
    lines = (tmp_path / "rows.jsonl").read_text().splitlines()
    assert len(lines) == len(p["rows"])
    bench.main(["--micro", "--runs", str(tmp_path), "--data", str(tiny_data.path)])
    again = json.loads((tmp_path / "trs_v2.json").read_text())
    assert (tmp_path / "rows.jsonl").read_text().splitlines() == lines
    assert [r["val"] for r in again["rows"]] == [r["val"] for r in p["rows"]]
