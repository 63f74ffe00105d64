"""benchmarks/bench_diagnose_calibration.py: Spearman (ties averaged) against an independent
computation, the "beats the gap" flag, the dry-run cost, and the micro run end to end (schema;
the correlations and the recovered share recomputed from the saved rows)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from test_convert_fixtures import tiny_data  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    path = ROOT / "benchmarks" / "bench_diagnose_calibration.py"
    spec = importlib.util.spec_from_file_location("bench_diagnose_calibration", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rho(x, y):
    """Independent Spearman: scipy when present, else Pearson of numpy average ranks."""
    pts = [(a, b) for a, b in zip(x, y) if a is not None and b is not None
           and math.isfinite(a) and math.isfinite(b)]  # fmt: skip
    if len(pts) < 3:
        return None
    try:
        from scipy.stats import spearmanr

        return float(spearmanr([p[0] for p in pts], [p[1] for p in pts]).statistic)
    except ImportError:

        def rank(v):
            v = np.asarray(v, float)
            return np.array([np.mean(np.flatnonzero(np.sort(v) == e)) for e in v])

        return float(np.corrcoef(rank([p[0] for p in pts]), rank([p[1] for p in pts]))[0, 1])


def test_spearman_with_ties(bench):
    x = [0.1, 0.5, 0.5, 2.0, 3.0, None, 1.0]
    y = [0.9, 0.2, 0.4, 0.1, 0.3, 0.5, float("nan")]
    assert bench.spearman(x, y) == pytest.approx(_rho(x, y))
    assert bench.spearman([1, 2], [2, 1]) is None


def test_correlations_beats_gap(bench):
    rows = [dict(gap=g, kappa_hat=k, wall_slope=None, radius=r, recovered_net=y)
            for g, k, r, y in [(0.1, 3, 1, 0.2), (0.2, 1, 2, 0.5), (0.3, 2, 3, 0.1),
                               (0.4, 4, 4, 0.6)]]  # fmt: skip
    c = bench.correlations(rows)
    assert c["gap"]["spearman"] == pytest.approx(
        _rho([r["gap"] for r in rows], [r["recovered_net"] for r in rows])
    )
    assert c["kappa_hat"]["beats_gap"] is (
        abs(c["kappa_hat"]["spearman"]) > abs(c["gap"]["spearman"])
    )
    assert c["wall_slope"] == {"spearman": None, "n": 0, "beats_gap": None}


def test_dry_run(bench, capsys):
    bench.main(["--dry-run", "--smollm", "/nonexistent"])
    text = capsys.readouterr().out
    cost = json.loads(text[: text.rindex("}") + 1])
    assert cost["models"] == ["d2", "d4"] and cost["points"] == 8
    assert cost["skipped"]


def test_micro_run(bench, tmp_path, tiny_data):  # noqa: F811  (tiny_data: the fixture)
    bench.main(
        ["--micro", "--runs", str(tmp_path), "--fp-tokens", "32768", "--data", str(tiny_data.path)]
    )
    p = json.loads((tmp_path / "diagnose_calibration.json").read_text())
    assert {"command", "rows", "correlations", "cost_estimate", "machine"} <= set(p)
    assert (tmp_path / "diagnose_calibration.md").is_file()
    rows = p["rows"]
    assert [(r["model"], r["bits"]) for r in rows] == [("d2", 2), ("d2", 3), ("d2", 4)]
    for r in rows:
        assert set(bench.MEASURES) | {"recovered", "verdict"} <= set(r)
        gap = r["train_ptq"] - r["train_fp"]
        want = (r["train_ptq"] - r["qat"]) / gap if gap > 1e-9 else None
        assert r["recovered"] == (pytest.approx(want) if want is not None else None)
        # net of the float fine-tune on the same tokens (its own run in the runs dir)
        ft = json.loads((tmp_path / "ft_d2" / "result.json").read_text())["eval"]["fp"]["loss"]
        net = 1 - (r["qat"] - ft) / gap if gap > 1e-9 else None
        assert r["float_ft"] == ft
        assert r["recovered_net"] == (pytest.approx(net) if net is not None else None)
    y = [r["recovered_net"] for r in rows]
    for m in bench.MEASURES:
        want = _rho([r[m] for r in rows], y)
        got = p["correlations"][m]["spearman"]
        assert got == (pytest.approx(want) if want is not None else None)
