"""A model's own Hugging Face tokenizer in `mlx_qat.data` (data/tokenizer_dir.py): shards
encoded as mlx-lm encodes, one identity per tokenizer, uint32 shards for large vocabularies,
the `--tokenizer` flag for both kinds."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from test_train_fixtures import CORPUS

from mlx_qat.data import (
    TokenBatches,
    load_tokenizer,
    prepare_data,
    read_documents,
    save_hf_tokenizer,
    split_documents,
    tokenizer_kind,
    tokenizer_sha256,
)


def test_shards_are_mlx_lm_encode_of_each_document_then_eos(hf_model, tmp_path):
    from mlx_lm.tokenizer_utils import load as mlx_lm_tokenizer

    b = prepare_data(CORPUS, tmp_path / "data", tokenizer=hf_model, val_fraction=0.1, seed=0)
    ref = mlx_lm_tokenizer(hf_model)  # what mlx_lm.load(hf_model) returns as its tokenizer
    m = b.manifest
    assert m["tokenizer"]["kind"] == "hf" and m["tokenizer"]["sha256"] == tokenizer_sha256(hf_model)
    assert b.vocab_size == len(ref) == 512 and b.train.dtype == np.uint16
    assert (b.bos_id, b.eos_id) == (ref.bos_token_id, ref.eos_token_id) == (0, 1)
    # The data keeps its own copy of the tokenizer files, byte for byte.
    assert (
        b.tokenizer_dir.name.startswith("tokenizer-hf-") and b.tokenizer_dir.parent == b.path.parent
    )
    for f in b.tokenizer_dir.iterdir():
        assert f.read_bytes() == (hf_model / f.name).read_bytes(), f.name
    docs = dict(zip(("train", "val", "test"), split_documents(read_documents(CORPUS), 0.1, 0)))
    for split in ("val", "test"):
        want = [i for d in docs[split] for i in [*ref.encode(d), ref.eos_token_id]]
        np.testing.assert_array_equal(np.asarray(b.split(split)), want)
    # BOS starts every document here: this tokenizer's encode adds it, as Llama's does.
    first = ref.encode(docs["val"][0])
    assert first[0] == ref.bos_token_id and b.val[0] == ref.bos_token_id
    assert ref.decode(first[1:]) == docs["val"][0]


def test_one_identity_per_tokenizer(hf_model, tiny_data, tmp_path):
    sp = tiny_data.tokenizer_dir
    # An mlx_qat.data tokenizer: the sha256 of tokenizer.model, as every shard recorded.
    assert tokenizer_kind(sp) == "sentencepiece"
    assert tokenizer_sha256(sp) == hashlib.sha256((sp / "tokenizer.model").read_bytes()).hexdigest()
    # The HF files mlx_qat derives from it (a run's tokenizer/, an export) are the same one.
    derived = tmp_path / "derived"
    save_hf_tokenizer(sp, derived)
    assert tokenizer_kind(derived) == "sentencepiece"
    assert tokenizer_sha256(derived) == tokenizer_sha256(sp)
    # A model's own HF tokenizer: a copy is the same; a chat template or auto_map is not part
    # of the identity; any change to the ids is.
    sha = tokenizer_sha256(hf_model)
    assert tokenizer_kind(hf_model) == "hf" and sha != tokenizer_sha256(sp)
    copy = tmp_path / "copy"
    shutil.copytree(hf_model, copy)
    assert tokenizer_sha256(copy) == sha
    (copy / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    cfg_file = copy / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg_file.write_text(json.dumps({**cfg, "auto_map": {"AutoTokenizer": ["x.Y", None]}}))
    assert tokenizer_sha256(copy) == sha
    cfg_file.write_text(json.dumps({**cfg, "eos_token": "<|bos|>"}))
    assert tokenizer_sha256(copy) != sha
    cfg_file.write_text(json.dumps(cfg))
    tok_file = copy / "tokenizer.json"
    tok = json.loads(tok_file.read_text())
    tok["model"]["merges"] = tok["model"]["merges"][:-1]  # one merge fewer: other ids
    tok_file.write_text(json.dumps(tok))
    assert tokenizer_sha256(copy) != sha
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty: no tokenizer in it"):
        tokenizer_sha256(tmp_path / "empty")
    assert type(load_tokenizer(sp)).__name__ == "Tokenizer"
    assert type(load_tokenizer(hf_model)).__name__ == "HFTokenizer"


def test_vocabulary_above_65536_gives_uint32_shards(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # A word-level tokenizer: "w<i>" is id i, up to 70,000 ids; id 0 is EOS, 1 unknown.
    n = 70_000
    vocab = {"<eos>": 0, "<unk>": 1, **{f"w{i}": i for i in range(2, n)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>")
    hf.save_pretrained(str(tmp_path / "tok"))
    docs = [[69_999, 65_536, 7], [65_535, 65_537, 123, 68_000], [3, 66_000]]
    text = "\n\n".join(" ".join(f"w{i}" for i in d) for d in docs)
    (tmp_path / "in.txt").write_text(text + "\n")
    b = prepare_data(
        tmp_path / "in.txt", tmp_path / "data", tokenizer=tmp_path / "tok",
        val_fraction=0.0, test_fraction=0.0,
    )  # fmt: skip
    assert b.vocab_size == n and b.manifest["dtype"] == "uint32" and b.train.dtype == np.uint32
    want = [i for d in docs for i in [*d, 0]]
    np.testing.assert_array_equal(np.asarray(b.train), want)
    batch = TokenBatches(b.train, batch_size=1, seq_len=len(want) - 1).batch(0)
    assert np.array(batch)[0].tolist() == want  # the batches read them back as int32


def test_data_cli_tokenizer_flag_takes_both_kinds(hf_model, tiny_data, tmp_path, capsys):
    from mlx_qat.cli.data import main

    common = ["--input", str(CORPUS / "milton.txt.gz"), "--quiet"]
    assert main([*common, "--out", str(tmp_path / "hf"), "--tokenizer", str(hf_model)]) == 0
    from mlx_qat.data import load_bundle

    b = load_bundle(tmp_path / "hf")
    assert b.manifest["tokenizer"]["kind"] == "hf" and b.vocab_size == 512
    sp = tiny_data.tokenizer_dir
    assert main([*common, "--out", str(tmp_path / "sp"), "--tokenizer", str(sp)]) == 0
    b = load_bundle(tmp_path / "sp")
    assert b.manifest["tokenizer"]["kind"] == "sentencepiece"
    assert b.manifest["tokenizer"]["sha256"] == tiny_data.manifest["tokenizer"]["sha256"]
    assert b.tokenizer_dir.parent.resolve() == (tmp_path / "sp").resolve()  # a copy in --out
    (tmp_path / "none").mkdir()
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "x"), "--tokenizer", str(tmp_path / "none")]) == 1
    assert "no tokenizer in it" in capsys.readouterr().err


def test_data_made_with_a_tokenizer_holds_it_and_no_ignored_vocab_size(
    hf_model, tiny_data, tmp_path
):
    """A data folder made with `--tokenizer` keeps working when the tokenizer's folder is gone
    and the data folder is moved; its config.yaml records no --vocab-size (it was ignored)."""
    import yaml

    from mlx_qat.cli.data import main
    from mlx_qat.data import load_bundle

    origin = tmp_path / "origin"
    shutil.copytree(tiny_data.tokenizer_dir, origin)
    common = ["--input", str(CORPUS / "milton.txt.gz"), "--quiet"]
    assert main([*common, "--out", str(tmp_path / "sp"), "--tokenizer", str(origin)]) == 0
    assert main([*common, "--out", str(tmp_path / "hf"), "--tokenizer", str(hf_model)]) == 0
    shutil.rmtree(origin)
    shutil.move(tmp_path / "sp", tmp_path / "moved")
    b = load_bundle(tmp_path / "moved")
    assert b.tokenizer_dir.parent.resolve() == (tmp_path / "moved").resolve()
    assert b.manifest["tokenizer"]["sha256"] == tiny_data.manifest["tokenizer"]["sha256"]
    assert b.tokenizer().encode("To be") == tiny_data.tokenizer().encode("To be")
    for out in ("moved", "hf"):
        saved = yaml.safe_load((tmp_path / out / "config.yaml").read_text())
        assert "vocab_size" not in saved and saved["tokenizer"]
    # without --tokenizer the size is what the tokenizer was trained with: recorded
    assert main([*common, "--out", str(tmp_path / "own"), "--vocab-size", "400"]) == 0
    assert yaml.safe_load((tmp_path / "own" / "config.yaml").read_text())["vocab_size"] == 400


def test_a_tokenizer_whose_encode_ends_with_eos_gets_no_second_one(hf_model, tmp_path):
    from mlx_lm.tokenizer_utils import load as mlx_lm_tokenizer

    tok_dir = tmp_path / "tok"
    shutil.copytree(hf_model, tok_dir)
    tok_file = tok_dir / "tokenizer.json"
    tok = json.loads(tok_file.read_text())
    post = tok["post_processor"]  # "<|bos|> $A" -> "<|bos|> $A <|eos|>"
    post["single"].append({"SpecialToken": {"id": "<|eos|>", "type_id": 0}})
    post["special_tokens"]["<|eos|>"] = {"id": "<|eos|>", "ids": [1], "tokens": ["<|eos|>"]}
    tok_file.write_text(json.dumps(tok))
    ref = mlx_lm_tokenizer(tok_dir)
    b = prepare_data(CORPUS / "milton.txt.gz", tmp_path / "data", tokenizer=tok_dir)
    docs = split_documents(read_documents(CORPUS / "milton.txt.gz"), 0.05, 0)[1]
    want = [ref.encode(d) for d in docs]
    assert want and all(w[0] == 0 and w[-1] == 1 and 1 not in w[:-1] for w in want)
    np.testing.assert_array_equal(np.asarray(b.val), [i for w in want for i in w])
