"""`mlx_qat.eval` and `mlx_qat.diagnose` check the memory of their evaluation forward
(mlx_qat.train.memory.check_forward_memory) as `train` checks its step: at --seq-len 200000
both crashed in MLX's allocation (exit 139, no message); now they refuse in one line naming the
estimate and a --seq-len that fits. The long windows need a validation split of 400k tokens:
the corpus sample, four times over, encoded with the run's own tokenizer."""

from __future__ import annotations

import gzip
import re
import subprocess
import sys

import pytest
from test_convert_fixtures import CORPUS, REPO

from mlx_qat.data import prepare_data
from mlx_qat.train.memory import forward_bytes

SEQ = 200_000  # 2 windows of it: ~300 GiB of attention scores on the CPU, more than any host


@pytest.fixture(scope="module")
def long_run(tmp_path_factory, runs):
    """(a tiny trained run, prepared data with a 400k-token validation split of its tokenizer)."""
    root = tmp_path_factory.mktemp("long")
    run = runs.make(root / "run", fake_quant=False)
    docs = [
        d
        for f in sorted(CORPUS.glob("*.txt.gz"))
        for d in gzip.open(f, "rt", encoding="utf-8").read().split("\n\n")
        if d.strip()
    ]
    text = root / "text.txt"
    text.write_text("\n\n".join(f"{i}. {d}" for i in range(4) for d in docs), encoding="utf-8")
    data = prepare_data(
        text, root / "data", val_fraction=0.9, test_fraction=0.0, tokenizer=run.path / "tokenizer"
    )
    assert len(data.val) > 2 * SEQ + 1
    return run, data


@pytest.mark.parametrize("verb", ["eval", "diagnose"])
def test_a_forward_that_cannot_fit_is_one_line_naming_a_seq_len_that_fits(tmp_path, long_run, verb):
    run, data = long_run
    proc = subprocess.run(
        [sys.executable, "-m", "mlx_qat", verb, str(run.path), "--data", str(data.path),
         "--seq-len", str(SEQ), "--batch-size", "2", "--eval-batches", "1",
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith(f"mlx_qat.{verb}: error: --seq-len {SEQ}, --batch-size 2: one "), err
    assert "GiB available" in err
    fit = int(re.search(r"--seq-len (\d+) fits at --batch-size 2", err)[1])
    assert 0 < fit < SEQ
    # the estimate is the module's: B · h · T² float32 attention scores dominate
    scores = forward_bytes(run.model.args.__dict__, 0, 2, SEQ, attention=True)["attention"]
    assert f"attention {scores / 2**30:.1f}" in err
    assert not (tmp_path / "out" / f"{verb}.json").exists()
