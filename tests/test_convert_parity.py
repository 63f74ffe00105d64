"""convert's parity data (mlx_qat.convert.parity): only token ids the model can read."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from test_convert_fixtures import VOCAB

from mlx_qat.cli.convert import main
from mlx_qat.convert import ConvertError, convert

mx.set_default_device(mx.cpu)


@pytest.fixture
def run(tmp_path, runs):
    return runs.make(tmp_path / "run", steps=1)


def npy(tmp_path, name, array):
    path = tmp_path / name
    np.save(path, array)
    return path


@pytest.mark.parametrize(
    "name,array,message",
    [
        ("float.npy", np.linspace(0.5, 300.5, 2000), r"float64 values, not token ids"),
        ("negative.npy", np.arange(-5, 1995) % VOCAB - 3, r"negative token id -3"),
        ("matrix.npy", np.arange(2000).reshape(2, 1000) % VOCAB, r"shape \(2, 1000\), not 1-D"),
        ("too_big.npy", np.arange(2000) % (VOCAB + 7), rf"token id {VOCAB + 6} >= .*{VOCAB}"),
    ],
)
def test_parity_data_must_be_token_ids_of_the_model(run, tmp_path, name, array, message):
    path = npy(tmp_path, name, array)
    with pytest.raises(ConvertError, match=rf"parity data {path}: .*{message}"):
        convert(run.path, tmp_path / "out", parity_data=path, parity_batches=1)
    assert not (tmp_path / "out").exists()


def test_parity_data_npy_of_token_ids_passes(run, tmp_path, tiny_data, capsys):
    path = npy(tmp_path, "val.npy", np.asarray(tiny_data.val[:4000], dtype=np.int32))
    result = convert(run.path, tmp_path / "out", parity_data=path, parity_batches=1)
    assert result.parity["passed"] and result.parity["data"] == str(path)
    bad = npy(tmp_path, "bad.npy", np.asarray(tiny_data.val[:4000], dtype=np.float32))
    assert main([str(run.path), "--mlx-path", str(tmp_path / "o2"), "--parity-data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "float32 values, not token ids" in err and "np.int32" in err
