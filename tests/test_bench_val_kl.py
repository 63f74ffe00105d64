"""benchmarks/val_kl.py: the mean KL to the teacher against a numpy reference, and the choice
of a setting per width and method family on validation loss vs validation KL."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def val_kl():
    spec = importlib.util.spec_from_file_location("val_kl", ROOT / "benchmarks" / "val_kl.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _Fixed:
    """A 'model' returning fixed logits for a batch of inputs (first dim batch, then time)."""

    def __init__(self, logits):
        self.logits = [mx.array(x) for x in logits]
        self.calls = 0

    def __call__(self, x):
        out = self.logits[self.calls]
        self.calls += 1
        assert out.shape[:2] == x.shape
        return out


def test_mean_kl_matches_numpy(val_kl):
    rng = np.random.default_rng(0)
    batches = [mx.zeros((2, 6), dtype=mx.int32) for _ in range(3)]
    t = [rng.normal(size=(2, 5, 11)).astype(np.float32) for _ in batches]
    s = [rng.normal(size=(2, 5, 11)).astype(np.float32) for _ in batches]
    teacher = val_kl.teacher_logprobs(_Fixed(t), batches)
    got = val_kl.mean_kl(_Fixed(s), batches, teacher)

    def logp(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lt, ls = np.concatenate([logp(x) for x in t]), np.concatenate([logp(x) for x in s])
    want = (np.exp(lt) * (lt - ls)).sum(-1).mean()
    assert got == pytest.approx(want, rel=1e-5)
    assert val_kl.mean_kl(_Fixed(t), batches, teacher) == pytest.approx(0.0, abs=1e-6)


def test_choice_per_family(val_kl):
    rows = [
        dict(name="dwq~1e-4", method="dwq", bits=4, seed=0, val=3.0, val_kl=0.02, test_recovered=0.8,
             left_out_recovered=0.6),
        dict(name="dwq~3e-4", method="dwq", bits=4, seed=0, val=2.9, val_kl=0.03, test_recovered=0.6,
             left_out_recovered=0.2),
        dict(name="qat_kd~0:1e-4+fixed+split", method="qat_kd", bits=4, seed=0, val=3.1, val_kl=0.01,
             test_recovered=0.83, left_out_recovered=0.65),
        dict(name="qat_kd~3e-4:1e-4+fixed", method="qat_kd", bits=4, seed=0, val=3.05, val_kl=0.015,
             test_recovered=0.84, left_out_recovered=0.54),
        dict(name="rtn", method="rtn", bits=4, seed=None, val=4.0, val_kl=0.3, test_recovered=0.0,
             left_out_recovered=0.0),
    ]  # fmt: skip
    lines = "\n".join(val_kl.report_lines(rows, []))
    assert "| dwq (2 folders) | dwq~3e-4: 60.0 / 20.0 % | dwq~1e-4: 80.0 / 60.0 % |" in lines
    assert ("| qat_kd (2 folders) | qat_kd~3e-4:1e-4+fixed: 84.0 / 54.0 % | "
            "qat_kd~0:1e-4+fixed+split: 83.0 / 65.0 % |") in lines  # fmt: skip
    assert "| rtn (" not in lines
    # the four trained rows, by hand: val ranks (1, 0, 3, 2), KL ranks (2, 3, 0, 1), left-out
    # recovery ranks (2, 0, 3, 1): Σd² = 2 and 18, ρ = 1 − 6Σd²/(n(n²−1)) = 0.8 and −0.8,
    # reported as −ρ
    assert "val loss -0.80, val KL 0.80" in lines


def test_spearman(val_kl):
    assert val_kl.spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert val_kl.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert val_kl.spearman([3, 1, 2], [30, 10, 20]) == pytest.approx(1.0)


def test_correlation_without_spread_is_reported_not_raised(val_kl):
    # equal validation losses have no ranking: spearman is None and the line says so
    rows = [dict(name=f"qat_kd~{i}", method="qat_kd", bits=4, seed=0, val=3.0, val_kl=0.01 * i,
                 test_recovered=0.8, left_out_recovered=0.1 * (4 - i)) for i in (1, 2, 3)]  # fmt: skip
    assert "val loss n/a, val KL 1.00" in "\n".join(val_kl.report_lines(rows, []))
