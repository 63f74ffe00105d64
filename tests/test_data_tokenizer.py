"""Tokenizer: exact round trip on real text, special ids, errors, and Hugging Face parity through
mlx-lm's own tokenizer loader (what ``mlx_lm.load`` calls)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from mlx_qat.data import (
    BOS_ID,
    EOS_ID,
    load_tokenizer,
    read_documents,
    save_hf_tokenizer,
    split_documents,
    train_tokenizer,
)

FIXTURE = Path(__file__).parent / "fixtures" / "corpus"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

EDGE_CASES = [
    "  two leading spaces and trailing  ",
    "tabs\tinside\t\tand a form feed\f",
    "unicode: café — naïve ☃ 日本語 🎉 Ω",
    "CRLF\r\nand lone CR\r",
    "a\n\nb\n\n\nc",
    "digits 1790 3.14159 -42",
    "<s> </s> <unk> are plain text here",
    "x" * 3000,
    " ",
    "",
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    train, _, _ = split_documents(read_documents(FIXTURE), 0.1, 0)
    return train_tokenizer(train, tmp_path_factory.mktemp("tok") / "tokenizer", vocab_size=512)


@pytest.fixture(scope="module")
def mlx_lm_tokenizer(tok_dir, tmp_path_factory):
    from mlx_lm.utils import load_tokenizer as mlx_lm_load_tokenizer

    model_dir = tmp_path_factory.mktemp("model")
    (model_dir / "weights.safetensors").write_bytes(b"untouched")
    save_hf_tokenizer(tok_dir, model_dir)
    assert (model_dir / "weights.safetensors").read_bytes() == b"untouched"
    return mlx_lm_load_tokenizer(model_dir)


def test_tokenizer_files_and_special_ids(tok_dir):
    names = {p.name for p in tok_dir.iterdir()}
    assert {"tokenizer.model", "tokenizer_meta.json", "tokenizer.json"} <= names
    assert {"tokenizer_config.json", "special_tokens_map.json"} <= names
    tok = load_tokenizer(tok_dir)
    assert (tok.vocab_size, tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (512, 0, 1, 2, -1)
    assert (tok.bos_id, tok.eos_id) == (BOS_ID, EOS_ID)
    meta = json.loads((tok_dir / "tokenizer_meta.json").read_text())
    assert meta["sha256"] == tok.sha256 and meta["settings"]["byte_fallback"] is True
    assert tok.decode([BOS_ID, *tok.encode("hi"), EOS_ID]) == "hi"


def test_round_trip_on_real_paragraphs(tok_dir):
    tok = load_tokenizer(tok_dir)
    docs = read_documents(FIXTURE)
    ids = tok.encode_batch(docs)
    assert [tok.decode(x) for x in ids] == docs
    assert all(tok.unk_id not in x for x in ids)  # byte fallback, never <unk>
    assert ids[5] == tok.encode(docs[5])
    for text in EDGE_CASES:
        assert tok.decode(tok.encode(text)) == text


def test_round_trip_on_shared_corpora(tok_dir):
    """A slice of every corpus in shared/data (not only the fixture's first pages)."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (shared corpora not checked out beside the repo)")
    tok = load_tokenizer(tok_dir)
    rng = random.Random(0)
    for f in sorted(SHARED.glob("*.txt.gz")):
        docs = read_documents(f)
        sample = rng.sample(docs, min(200, len(docs)))
        sample = [d[:20_000] for d in sample]
        assert [tok.decode(x) for x in tok.encode_batch(sample)] == sample, f.name


def test_hf_files_load_offline_in_mlx_lm_and_match_sentencepiece(tok_dir, mlx_lm_tokenizer):
    tok = load_tokenizer(tok_dir)
    hf = mlx_lm_tokenizer
    assert hf.eos_token_id == tok.eos_id and hf.bos_token_id == tok.bos_id
    assert type(hf.detokenizer).__name__ == "SPMStreamingDetokenizer"
    texts = read_documents(FIXTURE) + EDGE_CASES
    if SHARED.is_dir():
        rng = random.Random(1)
        for f in sorted(SHARED.glob("*.txt.gz")):
            docs = read_documents(f)
            texts += [d[:5000] for d in rng.sample(docs, min(100, len(docs)))]
    mismatched = [t for t in texts if hf.encode(t) != tok.encode(t)]
    assert not mismatched, mismatched[:3]
    for t in texts:
        assert hf.decode(tok.encode(t)) == tok.decode(tok.encode(t))
    # Streaming detokenizer (used by mlx_lm.generate) reproduces the text too.
    text = read_documents(FIXTURE / "milton.txt.gz")[3]
    detok = hf.detokenizer
    for t in tok.encode(text):
        detok.add_token(t)
    detok.finalize()
    assert detok.text == text


def test_vocab_size_too_large_is_a_clear_error(tmp_path):
    docs = read_documents(FIXTURE / "shakespeare.txt.gz")[:30]
    with pytest.raises(ValueError, match=r"vocab size 5000 is too large.*smaller --vocab-size"):
        train_tokenizer(docs, tmp_path / "t", vocab_size=5000)
    with pytest.raises(ValueError, match=r"too small.*larger --vocab-size"):
        train_tokenizer(docs, tmp_path / "t", vocab_size=100)
    assert not (tmp_path / "t").exists()


def test_missing_tokenizer_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="train the tokenizer first"):
        save_hf_tokenizer(tmp_path, tmp_path / "model")


def test_training_is_deterministic_whatever_the_thread_count(tok_dir, tmp_path):
    train, _, _ = split_documents(read_documents(FIXTURE), 0.1, 0)
    for threads in (1, 3):
        again = train_tokenizer(train, tmp_path / f"t{threads}", 512, num_threads=threads)
        assert load_tokenizer(again).sha256 == load_tokenizer(tok_dir).sha256
