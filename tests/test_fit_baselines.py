"""mlx_qat.fit.baselines: the trivial predictors of the held-out size, on hand-made rows whose
answers are worked out in the comments."""

import numpy as np
import pytest

from mlx_qat.fit.baselines import (
    bit_choice_check,
    copy_check,
    error_split,
    fraction_check,
    nearest_size_copy,
    verdict,
)
from mlx_qat.fit.rows import parse_rows

D = 1e6


def row(N, bits, f, loss, seed=0, d=D):
    return dict(N=N, D=d, D_fp=(1 - f) * d, D_qat=f * d, bits=bits, final_loss=loss, seed=seed)


# the fitted sizes 1e5 and 2e5, the held-out 4e5
TRAIN = parse_rows(
    [
        row(1e5, 4, 0.1, 4.0),
        row(1e5, 4, 0.2, 4.1),  # the only 4-bit f = 0.2 run: copied although 1e5 is farther
        row(2e5, 4, 0.1, 3.4, seed=0),
        row(2e5, 4, 0.1, 3.6, seed=1),  # two seeds: their mean, 3.5, is copied
        row(2e5, 2, 0.2, 9.0),  # 2 bits: never a twin of a 4-bit run
        row(2e5, None, 0.0, 3.0),  # FP and PTQ runs are no QAT run's twin
        row(2e5, 4, 0.0, 3.3),
    ]
)
TEST = parse_rows(
    [
        row(4e5, 4, 0.1, 3.15),  # copy 3.5: |3.5/3.15 − 1| = 1/9
        row(4e5, 4, 0.2, 4.0, d=D + 1e-4),  # D to 9 digits: copy 4.1, error 0.025
        row(4e5, 4, 0.5, 3.0),  # no fitted size ran f = 0.5 at 4 bits: left out
    ]
)


def test_nearest_size_copy_by_hand():
    pred, src = nearest_size_copy(TRAIN, TEST)
    assert list(pred[:2]) == pytest.approx([3.5, 4.1]) and list(src[:2]) == [2e5, 1e5]
    assert pred[2] != pred[2] and src[2] != src[2]  # NaN: no twin


def test_copy_check_scores_the_law_on_the_same_runs():
    law = [3.15 * 1.02, 4.0, 99.0]  # 2% off, exact, and a run the copy cannot predict
    c = copy_check(TRAIN, TEST, law)
    assert c["from_N"] == [1e5, 2e5] and c["n_rows"] == 2
    assert c["mean_abs_rel_err"] == pytest.approx((1 / 9 + 0.025) / 2)
    assert c["max_abs_rel_err"] == pytest.approx(1 / 9)
    assert c["law"]["n_rows"] == 2 and c["law"]["mean_abs_rel_err"] == pytest.approx(0.01)
    beats, lines = verdict(c, None)
    assert beats == {"copy": True}
    assert lines == [
        "held-out loss: the law (mean |error| 1.00%) beats copying the nearest fitted size "
        "(6.81%) on 2 runs"
    ]
    beats, lines = verdict(copy_check(TRAIN, TEST, [3.5 * 1.0001, 4.1, 0.0]), None)
    assert beats == {"copy": False} and "does NOT beat" in lines[0]
    assert copy_check(TRAIN, parse_rows([row(4e5, 4, 0.5, 3.0)]), [3.0]) is None


def test_fraction_check_and_a_tie_is_no_win():
    """Optima 0.05 and 0.2 (vertex), 0.05 and 0.3 (argmin). A constant 0.1 is off by 0.05 and
    0.1 (MAE 0.075), resp. 0.05 and 0.2 (0.125). The law predicts 0.15 and 0.05: MAE 0.125 and
    0.175 (vertex) and 0.175 (argmin): it loses; f-hat ties the constant on the vertices,
    which is no win."""
    optima = {"vertex": [0.05, 0.2], "argmin": [0.05, 0.3]}
    f_hat = {"vertex": [0.1, 0.1], "argmin": [0.05, 0.3]}
    fr = fraction_check(optima, [0.15, 0.05], f_hat)
    assert fr["n_optima"] == 2 and fr["const_f"] == 0.1
    m = fr["mae"]
    assert m["const"] == pytest.approx({"vertex": 0.075, "argmin": 0.125})
    assert m["law"] == pytest.approx({"vertex": 0.125, "argmin": 0.175})
    assert m["f_hat"] == pytest.approx({"vertex": 0.075, "argmin": 0.0})
    beats, lines = verdict(None, fr)
    assert beats == {"const_f_law": False, "const_f_f_hat": False}
    assert "the nearest-size copy could not be scored" in lines.pop(0)
    assert lines[0] == (
        "held-out optimal fraction: the law's argmin (MAE 0.125 vertex, 0.175 argmin) does NOT "
        "beat a constant f = 0.1 (0.075, 0.125) on 2 optima"
    )
    assert "does NOT beat" in lines[1]
    beats, _ = verdict(None, fraction_check(optima, [0.1, 0.1], f_hat))
    assert beats["const_f_law"] is False  # the constant itself: a tie
    beats, _ = verdict(None, fraction_check(optima, [0.05, 0.25], f_hat))
    assert beats["const_f_law"] is True  # 0.025 < 0.075 and 0.025 < 0.125


def test_memory_matched_bit_choice_by_hand():
    """The held-out 4e5 at 2 bits (1e5 bytes) meets the fitted 2e5 at 4 bits (1e5 bytes, not
    1e5 at 4 bits: 5e4 bytes, 2x off); the held-out 4 bits (2e5 bytes) has no partner within
    1.5x (2e5 at 2 bits is 5e4 bytes) and is left out."""
    train = parse_rows(
        [
            row(2e5, 4, 0.1, 3.38),
            row(2e5, 4, 0.2, 3.45),
            row(2e5, 4, 0.1, 2.0, d=2 * D),  # another budget: never compared
            row(1e5, 4, 0.1, 3.0),  # 4 bits but 5e4 bytes: farther in memory
            row(2e5, 2, 0.1, 3.9),
        ]
    )
    test = parse_rows(
        [
            row(4e5, 2, 0.1, 3.30, seed=0),
            row(4e5, 2, 0.1, 3.50, seed=1),  # seeds averaged: 3.40, so f = 0.2 is the best
            row(4e5, 2, 0.2, 3.35),
            row(4e5, 4, 0.1, 3.1),
        ]
    )
    law = {(4e5, 2, 0.1): 3.5, (4e5, 2, 0.2): 3.4, (2e5, 4, 0.1): 3.3, (2e5, 4, 0.2): 3.6}

    def predict(r, law=law):
        return [law.get((n, b, round(f, 6)), 9.0) for n, b, f in zip(r.N, r.bits, r.f)]

    (p,) = bit_choice_check(train, test, predict)
    assert p["D"] == D and (p["held"]["N"], p["held"]["bits"]) == (4e5, 2)
    assert (p["fitted"]["N"], p["fitted"]["bits"]) == (2e5, 4)
    assert p["held"]["memory_bytes"] == p["fitted"]["memory_bytes"] == 1e5
    assert p["held"]["best"] == pytest.approx(3.35) and p["fitted"]["best"] == pytest.approx(3.38)
    assert (p["held"]["law_best"], p["fitted"]["law_best"]) == (3.4, 3.3)
    assert p["measured"] == "held" and p["law"] == "fitted" and p["law_right"] is False
    law[(2e5, 4, 0.1)] = 3.45  # now the law's best fitted side, 3.45, is above the held 3.4
    (p,) = bit_choice_check(train, test, predict)
    assert p["law"] == "held" and p["law_right"] is True
    assert bit_choice_check(train, test, predict, max_ratio=0.99) == []


def test_error_split_by_hand():
    """The held-out size 4e5 has its FP anchor at 2.8 (out of the fit); the fitted 2e5 has
    anchor 3.0 and a 4-bit f = 0.1 run at 3.3 (penalty 0.3). A law whose FP term says 2.7 at
    4e5 and whose penalty is 0.26 everywhere:
      FP term: |2.7/2.8 − 1| = 1/28;
      penalty on the measured anchor: 2.8 + 0.26 = 3.06 against 3.05 -> 1/305;
      the nearest size's penalty: 2.8 + 0.3 = 3.1 -> 5/305 (the 3-bit run has no twin)."""
    train = parse_rows([row(2e5, None, 0.0, 3.0), row(2e5, 4, 0.1, 3.3)])
    test = parse_rows([row(4e5, 4, 0.1, 3.05), row(4e5, 3, 0.1, 3.2)])
    fp_test = parse_rows([row(4e5, None, 0.0, 2.8)])

    def predict(N, D_fp, D_qat, bits):
        fp = np.where(np.asarray(N) > 3e5, 2.7, 3.0) * np.ones(np.broadcast(N, D_fp).shape)
        return fp + np.where(np.isnan(np.asarray(bits, float)), 0.0, 0.26)

    sp = error_split(train, test, fp_test, predict)
    assert sp["fp"]["n_rows"] == 1 and sp["fp"]["mean_abs_rel_err"] == pytest.approx(1 / 28)
    law = sp["penalty"]["law"]
    assert law["n_rows"] == 2
    # 3-bit run: 2.8 + 0.26 = 3.06 against 3.2
    assert law["mean_abs_rel_err"] == pytest.approx((1 / 305 + 0.14 / 3.2) / 2)
    copy = sp["penalty"]["copy"]
    assert copy["n_rows"] == 1 and copy["mean_abs_rel_err"] == pytest.approx(5 / 305)
    # no anchor at the held-out size: nothing to split
    assert (
        error_split(train, test, parse_rows([row(4e5, None, 0.0, 2.8, d=2 * D)]), predict) is None
    )
