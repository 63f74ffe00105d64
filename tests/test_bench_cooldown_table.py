"""benchmarks/cooldown_table.py: the optimum of the loss and of the QAT penalty per cooldown,
on synthetic sweep rows whose minima are known by construction (a parabola in ln f, as the
vertex is taken, whose vertex is a grid point), and the filter that keeps one (bits, D) slice."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "cooldown_table", ROOT / "benchmarks/cooldown_table.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rows(best_loss_f: float, best_penalty_f: float, bits: int = 2, D: int = 600_000) -> list[dict]:
    """A 98.5k model's runs at 5 fractions: loss minimal at `best_loss_f`, penalty (loss - twin)
    minimal at `best_penalty_f`; plus its FP anchor and a row of another width."""
    rows = [{"N": 98496, "D": D, "D_fp": D, "D_qat": 0, "bits": None, "ptq_bits": bits,
             "final_loss": 3.5, "pipeline": "fused", "f": 0.0, "seed": 0}]  # fmt: skip
    for f in (0.05, 0.1, 0.2, 0.3, 0.4):
        loss = 3.6 + math.log(f / best_loss_f) ** 2
        twin = loss - 0.1 - math.log(f / best_penalty_f) ** 2
        dq = round(f * D)
        rows.append({"N": 98496, "D": D, "D_fp": D - dq, "D_qat": dq, "bits": bits, "f": dq / D,
                     "final_loss": loss, "fp_twin_loss": twin, "qat_penalty": loss - twin,
                     "test_loss": loss + 0.01, "pipeline": "fused", "seed": 0})  # fmt: skip
    other = dict(rows[-1], bits=4 if bits == 2 else 2)
    return rows + [other]


def test_optima_per_cooldown(bench, tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("\n".join(json.dumps(r) for r in _rows(0.1, 0.1)) + "\n")
    b.write_text("\n".join(json.dumps(r) for r in _rows(0.3, 0.2) + _rows(0.05, 0.05, D=1_800_000)))
    bench.main([f"0.1={a}", f"0.3={b}", "--bits", "2", "--tokens", "6e5", "--out", str(tmp_path)])
    entries = json.loads((tmp_path / "cooldown.json").read_text())["entries"]
    got = [(e["cooldown"], e["f_loss_argmin"], e["f_penalty_argmin"]) for e in entries]
    assert got == [(0.1, 0.1, 0.1), (0.3, 0.3, 0.2)]  # one slice each: 2 bits at 0.6M only
    # the vertex of an exact parabola with its vertex on the grid is that grid point
    assert entries[1]["f_loss_vertex"] == pytest.approx(0.3, rel=1e-6)
    assert entries[0]["loss_by_f"]["0.2"] == pytest.approx(3.6 + math.log(2) ** 2)
    assert "| 0.3 | 98.5k | 0.6M | 2 |" in (tmp_path / "cooldown.md").read_text()
