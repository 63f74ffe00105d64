"""Issue 12, `mlx_qat.eval`: data of another vocabulary is refused by name (5), bad batch
shapes and an unwritable --out are one-line errors (9)."""

from __future__ import annotations

import json

import pytest
from test_train_fixtures import CORPUS, readonly_dir, tiny_config, tiny_data_dir  # noqa: F401

from mlx_qat.checkpoint import latest_checkpoint, seal_checkpoint
from mlx_qat.cli.eval import main as eval_main
from mlx_qat.data import prepare_data
from mlx_qat.eval import evaluate_checkpoint
from mlx_qat.train import train


@pytest.fixture(scope="module")
def run(tiny_data_dir, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("eval") / "run"
    train(tiny_config(tiny_data_dir, out, tokens=4 * 4 * 32, qat_fraction=0.5))
    return out


@pytest.fixture(scope="module")
def other_vocabs(tmp_path_factory):
    """The same text prepared with a smaller (400) and a larger (1024) vocabulary."""
    root = tmp_path_factory.mktemp("vocabs")
    return {
        v: prepare_data(CORPUS, root / str(v), vocab_size=v, val_fraction=0.1).path
        for v in (400, 1024)
    }


def _eval(argv, capsys) -> tuple[int, str]:
    rc = eval_main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def test_data_of_another_tokenizer_is_refused_by_name(run, other_vocabs, tmp_path, capsys):
    # Before: vocab 400 gave a plausible loss, vocab 1024 "loss nan"; both exit 0.
    for vocab, data in other_vocabs.items():
        rc, err = _eval([run, "--data", data, "--out", tmp_path / "ev"], capsys)
        assert rc == 1 and f"data {data}: encoded with the tokenizer sha256" in err, err
        assert f"(vocab {vocab})" in err and "--data with the run's own data" in err
    assert not (tmp_path / "ev" / "eval.json").exists()
    assert _eval([run, "--out", tmp_path / "ev"], capsys)[0] == 0  # the run's own data


def test_without_a_recorded_tokenizer_the_vocabulary_is_compared(run, other_vocabs, tmp_path):
    ckpt = tmp_path / "ckpt"
    import shutil

    shutil.copytree(latest_checkpoint(run), ckpt)
    state = json.loads((ckpt / "state.json").read_text())
    del state["tokenizer_sha256"]  # a checkpoint from before the tokenizer was recorded
    (ckpt / "state.json").write_text(json.dumps(state))
    seal_checkpoint(ckpt)
    with pytest.raises(ValueError, match=r"vocabulary 1024 is larger than the model's \(512"):
        evaluate_checkpoint(ckpt, data=str(other_vocabs[1024]))
    with pytest.raises(ValueError, match=r"vocabulary 400, the model's is 512"):
        evaluate_checkpoint(ckpt, data=str(other_vocabs[400]))


@pytest.mark.parametrize("flag", ["--seq-len", "--batch-size"])
def test_zero_batch_shape_is_refused(run, tmp_path, capsys, flag):
    rc, err = _eval([run, flag, "0", "--out", tmp_path / "ev"], capsys)
    assert rc == 1 and f"{flag} 0: must be >= 1" in err and err.count("\n") == 1, err
    with pytest.raises(ValueError, match=f"{flag} 0"):  # the library call too (was ignored)
        evaluate_checkpoint(run, **{flag[2:].replace("-", "_"): 0})


def test_read_only_out_is_one_line(run, readonly_dir, capsys):  # noqa: F811
    out = readonly_dir / "ev"
    rc, err = _eval([run, "--out", out, "--eval-batches", "1", "--quiet"], capsys)
    assert rc == 1 and err == (
        f"mlx_qat.eval: error: --out {out} (where eval.json goes): cannot write there "
        f"({'Operation not permitted' if str(out).startswith('/sys') else 'Permission denied'}); "
        "choose a writable directory\n"
    ), err
