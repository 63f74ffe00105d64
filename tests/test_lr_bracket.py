"""benchmarks/lr_bracket.py: the validation winner per method and where its learning rates sit
among those tried (hand-built rows, hand-read answers)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.lr_bracket import best_per_group, bracket_lines, position  # noqa: E402


def row(method, val, seed=0, tokens=50_176, **settings):
    return {"method": method, "name": f"{method}{settings}", "tokens": tokens, "seed": seed,
            "val_recovered": val, "test_recovered": val, "left_out_recovered": None,
            "settings": settings}  # fmt: skip


def test_position():
    assert position(1e-4, [1e-4]) == "only value"
    assert position(1e-4, [3e-5, 1e-4, 3e-4, 1e-4]) == "inside"
    assert position(3e-4, [3e-4, 1e-4]) == "top edge"
    assert position(0.0, [0.0, 1e-4]) == "bottom edge"


def test_dwq_winner_inside_its_bracket():
    rows = [row("dwq", 0.70, lr=3e-5), row("dwq", 0.76, lr=1e-4), row("dwq", 0.74, lr=3e-4)]
    (g,) = best_per_group(rows)
    assert g["best"]["settings"]["lr"] == 1e-4
    assert g["where"]["lr"] == (1e-4, [3e-5, 1e-4, 3e-4], "inside")


def test_qat_each_lr_bracketed_with_the_other_fixed():
    # weights 0 (+split) and 1e-4 at grid 1e-4, grid 3e-4 at weights 1e-4 and 3e-4: the best
    # (1e-4, 1e-4) is at the top of the weights' line at grid 1e-4 (weights 3e-4 was tried
    # only at grid 3e-4) and the bottom of the grid's line
    rows = [
        row("qat_kd", 0.78, lr=0.0, scale_lr=1e-4, split=True, objective="kd"),
        row("qat_kd", 0.81, lr=1e-4, scale_lr=1e-4, split=False, objective="kd"),
        row("qat_kd", 0.79, lr=1e-4, scale_lr=3e-4, split=False, objective="kd"),
        row("qat_kd", 0.75, lr=3e-4, scale_lr=3e-4, split=False, objective="kd"),
        row("qat_kd", 0.90, lr=1e-3, scale_lr=3e-4, split=False, objective="ce"),
    ]
    groups = {g["best"]["settings"]["objective"]: g for g in best_per_group(rows)}
    kd = groups["kd"]
    assert len(kd["tried"]) == 4
    assert kd["where"]["lr"] == (1e-4, [0.0, 1e-4], "top edge")
    assert kd["where"]["scale_lr"] == (1e-4, [1e-4, 3e-4], "bottom edge")
    assert groups["ce"]["where"]["lr"][2] == "only value"


def test_seeds_and_untrained_rows_kept_apart():
    rows = [row("dwq", 0.7, lr=1e-4), row("dwq", 0.8, seed=1, lr=3e-4),
            {**row("rtn", 0.0), "tokens": None}]  # fmt: skip
    assert sorted(len(g["tried"]) for g in best_per_group(rows)) == [1, 1]
    lines = bracket_lines(rows)
    assert len(lines) == 4 and "only value" in lines[2] and "80.0%" in lines[3]
