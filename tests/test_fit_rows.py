"""mlx_qat.fit.rows: the results.jsonl row schema the fitter reads."""

import json

import numpy as np
import pytest

from mlx_qat.fit.rows import REQUIRED, load_rows, parse_rows


def row(N=1e7, D=1e9, f=0.2, bits=4, loss=3.0, **extra):
    return dict(N=N, D=D, D_fp=(1 - f) * D, D_qat=f * D, bits=bits, final_loss=loss, **extra)


def test_schema_fields():
    assert REQUIRED == ("N", "D", "D_fp", "D_qat", "bits", "final_loss")


def test_parse_kinds():
    rows = [
        row(),  # QAT
        row(f=0.0, bits=None),  # FP, bits null
        row(f=0.0, bits=16),  # FP, bits 16
        row(f=1.0),  # QAT from scratch
        row(f=0.0),  # PTQ
        row(seed=3, pipeline="fused", note="ignored"),
    ]
    R = parse_rows(rows)
    assert len(R) == 6
    np.testing.assert_array_equal(R.fp, [0, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(R.qat, [1, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(R.from_scratch, [0, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(R.ptq, [0, 0, 0, 0, 1, 0])
    np.testing.assert_array_equal(R.fittable, [1, 1, 1, 0, 0, 1])
    assert np.isnan(R.bits[1]) and np.isnan(R.bits[2]) and R.bits[0] == 4
    assert R.seed[5] == 3 and np.isnan(R.seed[0])
    np.testing.assert_allclose(R.f[:2], [0.2, 0.0])
    sub = R.take(np.array([0, 0, 5]))
    assert len(sub) == 3 and sub.loss[1] == 3.0


def test_n_key():
    R = parse_rows([row(N_nonemb=5e6)], n_key="N_nonemb")
    assert R.N[0] == 5e6


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"D": 2e9}, "D_fp \\+ D_qat"),
        ({"bits": None}, "marks an FP run"),
        ({"final_loss": float("nan")}, "finite"),
        ({"N": 0}, "N > 0"),
    ],
)
def test_parse_errors(bad, match):
    r = row()
    r.update(bad)
    with pytest.raises(ValueError, match=match):
        parse_rows([r])


def test_missing_key():
    r = row()
    del r["final_loss"]
    with pytest.raises(ValueError, match="row 0: missing keys \\['final_loss'\\]"):
        parse_rows([r])


def test_mixed_pipelines_refused():
    with pytest.raises(ValueError, match="pipelines \\['classic', 'fused'\\]"):
        parse_rows([row(pipeline="classic"), row(pipeline="fused")])


def test_load_rows(tmp_path):
    p = tmp_path / "results.jsonl"
    p.write_text(json.dumps(row()) + "\n\n" + json.dumps(row(bits=2)) + "\n")
    assert [r["bits"] for r in load_rows(p)] == [4, 2]
    p.write_text(json.dumps(row()) + "\n{oops\n")
    with pytest.raises(ValueError, match="results.jsonl:2"):
        load_rows(p)
