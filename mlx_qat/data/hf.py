"""Hugging Face tokenizer files for a trained sentencepiece model, so that ``mlx_lm.load``
(``AutoTokenizer.from_pretrained``) works offline and encodes to exactly the sentencepiece ids:

* ``tokenizer.json``: a BPE model built from the sentencepiece vocabulary (merges ordered by the
  merged piece's rank, then by the ids of its halves), ``byte_fallback=True``, a ``Metaspace``
  pre-tokenizer without prefix space (sentencepiece's split with ``add_dummy_prefix=False``),
  and the decoder ``Replace(▁→space), ByteFallback, Fuse`` (mlx-lm's SPM streaming
  detokenizer, ``trim_space=False``).
* ``tokenizer_config.json``: ``PreTrainedTokenizerFast``; BOS ``<s>``, EOS ``</s>``, UNK
  ``<unk>``, none added by ``encode``; ``clean_up_tokenization_spaces=False`` (``" ,"`` stays
  as written), ``split_special_tokens=True`` (a literal ``"</s>"`` is ordinary text).
* ``special_tokens_map.json``, and a copy of ``tokenizer.model``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import sentencepiece as spm

from ..fileio import atomic_open, atomic_write_json, atomic_write_text

# The sentencepiece model `mlx_qat.data.tokenizer` trains, as HF tokenizers name it.
MODEL_FILE = "tokenizer.model"
HF_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _specials(sp: spm.SentencePieceProcessor) -> list[int]:
    return [i for i in range(sp.get_piece_size()) if sp.is_control(i) or sp.is_unknown(i)]


def _pieces(sp: spm.SentencePieceProcessor) -> tuple[dict[str, int], list[tuple[str, str]]]:
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    normal = {
        p
        for p, i in vocab.items()
        if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.is_unused(i))
    }
    merges = sorted(  # by the merged piece's rank, then by its halves' ids
        (vocab[p], vocab[p[:k]], vocab[p[k:]], p[:k], p[k:])
        for p in normal
        for k in range(1, len(p))
        if p[:k] in normal and p[k:] in normal
    )
    return vocab, [(m[3], m[4]) for m in merges]


def build_tokenizer_json(model_file: str | os.PathLike) -> str:
    """The ``tokenizer.json`` text equivalent to the sentencepiece model in ``model_file``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    vocab, merges = _pieces(sp)
    unk = sp.id_to_piece(sp.unk_id())
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="never", split=True
    )
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    tok.add_special_tokens(
        [AddedToken(sp.id_to_piece(i), special=True, normalized=False) for i in _specials(sp)]
    )
    return tok.to_str(pretty=True)


def hf_configs(model_file: str | os.PathLike) -> tuple[dict, dict]:
    """``(tokenizer_config, special_tokens_map)`` dicts for the model in ``model_file``."""
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    special = {
        "bos_token": sp.id_to_piece(sp.bos_id()),
        "eos_token": sp.id_to_piece(sp.eos_id()),
        "unk_token": sp.id_to_piece(sp.unk_id()),
    }
    added = {
        str(i): {
            "content": sp.id_to_piece(i),
            **dict.fromkeys(("lstrip", "normalized", "rstrip", "single_word"), False),
            "special": True,
        }
        for i in _specials(sp)
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": True,
        "model_max_length": 1_000_000_000,
        "added_tokens_decoder": added,
    }
    return config, special


def save_hf_tokenizer(tokenizer_dir: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Write (atomically) the Hugging Face tokenizer files of ``tokenizer_dir``'s model and a
    copy of ``tokenizer.model`` into ``out_dir``, leaving its other files alone; returns the
    written paths."""
    tokenizer_dir, out_dir = Path(tokenizer_dir), Path(out_dir)
    model = tokenizer_dir / MODEL_FILE if tokenizer_dir.is_dir() else tokenizer_dir
    if not model.is_file():
        raise FileNotFoundError(f"no {MODEL_FILE} in {tokenizer_dir}; train the tokenizer first")
    out_dir.mkdir(parents=True, exist_ok=True)
    config, special = hf_configs(model)
    written = [out_dir / name for name in HF_FILES]
    atomic_write_text(written[0], build_tokenizer_json(model))
    atomic_write_json(written[1], config)
    atomic_write_json(written[2], special)
    target = out_dir / MODEL_FILE
    if model.resolve() != target.resolve():
        with open(model, "rb") as src, atomic_open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    written.append(target)
    return written
