"""Training and loading the sentencepiece BPE tokenizer.

Choices, so that ``decode(encode(text)) == text`` exactly and the Hugging Face files of
`hf.save_hf_tokenizer` encode identically:

* BPE with ``byte_fallback=True``: a character outside the vocabulary becomes its UTF-8 byte
  pieces, never ``<unk>`` (newlines, tabs and rare characters are byte tokens).
* ``normalization_rule_name="identity"`` (no NFKC), ``add_dummy_prefix=False`` (encoding a
  text is encoding its pieces split before a space), ``remove_extra_whitespaces=False``: only
  a literal U+2581 ``▁`` does not round-trip (it decodes to a space).
* ``<unk>`` = 0, ``<s>`` (BOS) = 1, ``</s>`` (EOS) = 2, no pad piece (pad_id = -1: pad with
  EOS); shards put EOS after every document and no BOS. A literal ``"</s>"`` is ordinary text.
* ``split_digits=True``: numbers are spelt digit by digit.
* Training sentences are the document lines (cut at a space into <= 2048 characters), sampled
  up to ``input_sentence_size``, seeded: the model is deterministic for a given input and
  settings, and its sha256 machine-independent (``num_threads`` is cleared from it).
"""

from __future__ import annotations

import io
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import sentencepiece as spm

from ..fileio import atomic_write_bytes, atomic_write_json, building_dir, sha256_file
from .hf import MODEL_FILE, save_hf_tokenizer

logger = logging.getLogger(__name__)

META_FILE = "tokenizer_meta.json"
FORMAT = "mlx_qat.tokenizer/1"
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, -1
MAX_SENTENCE_CHARS = 2048
# The tokenizer size when none is given: `mlx_qat.data`, `mlx_qat.train` (raw --data) and
# `prepare_data` alike. 1024 suits the default d2 preset (width 64: a 4096-piece embedding
# would hold most of its parameters); the main job states its own (configs/main.yaml).
DEFAULT_VOCAB_SIZE = 1024

DEFAULT_SETTINGS: dict = {
    "model_type": "bpe",
    "byte_fallback": True,
    "normalization_rule_name": "identity",
    "add_dummy_prefix": False,
    "remove_extra_whitespaces": False,
    "split_digits": True,
    "character_coverage": 0.9999,
    "input_sentence_size": 1_000_000,
    "shuffle_input_sentence": True,
    "max_sentencepiece_length": 16,
    "max_sentence_length": 4 * MAX_SENTENCE_CHARS + 16,  # bytes; a chunk is <= 2048 chars
    "unk_id": UNK_ID,
    "bos_id": BOS_ID,
    "eos_id": EOS_ID,
    "pad_id": PAD_ID,
}


def default_threads() -> int:
    """The number of cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


def training_sentences(docs: Iterable[str], max_chars: int = MAX_SENTENCE_CHARS) -> Iterator[str]:
    """The lines of ``docs``; a line longer than ``max_chars`` is cut before a space."""
    for doc in docs:
        for line in doc.split("\n"):
            while len(line) > max_chars:
                cut = line.rfind(" ", 1, max_chars)
                if cut <= 0:
                    cut = max_chars
                yield line[:cut]
                line = line[cut:]
            if line.strip():
                yield line


class Tokenizer:
    """A trained sentencepiece model: ``encode``/``decode``, the special ids, and ``sha256`` (of
    ``tokenizer.model``: the identity token shards record)."""

    kind = "sentencepiece"

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        model = path / MODEL_FILE if path.is_dir() else path
        if not model.is_file():
            raise FileNotFoundError(
                f"no {MODEL_FILE} in {path}; train one with `python -m mlx_qat data` "
                "or mlx_qat.data.train_tokenizer()"
            )
        self.dir = model.parent
        self.sp = spm.SentencePieceProcessor(model_file=str(model))
        self.sha256 = sha256_file(model)

    vocab_size = property(lambda self: self.sp.get_piece_size(), doc="Ids, with the 256 bytes.")
    bos_id = property(lambda self: self.sp.bos_id(), doc="BOS id (1); not used in the shards.")
    eos_id = property(lambda self: self.sp.eos_id(), doc="EOS id (2), after every document.")
    unk_id = property(lambda self: self.sp.unk_id(), doc="<unk> id (0); byte fallback: never made.")
    pad_id = property(lambda self: self.sp.pad_id(), doc="Padding id (-1: none; pad with EOS).")

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no BOS/EOS added)."""
        return self.sp.encode(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int | None = None) -> list[list[int]]:
        """Token ids of many texts, encoded in parallel by sentencepiece."""
        return self.sp.encode(list(texts), num_threads=num_threads or default_threads())

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; BOS/EOS/UNK ids decode to nothing."""
        return self.sp.decode([int(i) for i in ids])

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.dir)!r}, vocab_size={self.vocab_size})"


def _normalized_model(data: bytes) -> bytes:
    # num_threads changes nothing of the tokenization: cleared, the sha256 is machine-independent
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(data)
    proto.trainer_spec.ClearField("num_threads")
    return proto.SerializeToString(deterministic=True)


_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
_TOO_LOW = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


def _train_error(err: Exception, vocab_size: int) -> ValueError:
    msg = str(err)
    if m := _TOO_HIGH.search(msg):
        return ValueError(
            f"vocab size {vocab_size} is too large for this training text: sentencepiece can "
            f"learn at most {m.group(2)} pieces from it. Use a smaller --vocab-size "
            f"(<= {m.group(2)}) or more text."
        )
    if m := _TOO_LOW.search(msg):
        return ValueError(
            f"vocab size {vocab_size} is too small: the text needs {m.group(2)} ids for special, "
            f"byte and single-character pieces. Use a larger --vocab-size (>= {m.group(2)})."
        )
    return ValueError(f"sentencepiece training failed (vocab size {vocab_size}): {msg}")


def train_tokenizer(
    docs: Sequence[str],
    out_dir: str | os.PathLike,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    *,
    num_threads: int | None = None,
    seed: int = 0,
    character_coverage: float = DEFAULT_SETTINGS["character_coverage"],
    input_sentence_size: int = DEFAULT_SETTINGS["input_sentence_size"],
    hf_files: bool = True,
    replace: bool = True,
) -> Path:
    """Train a sentencepiece BPE tokenizer on ``docs`` into ``out_dir`` (returned): writes
    ``tokenizer.model``, ``tokenizer_meta.json`` and (``hf_files``) the Hugging Face
    files, built aside and renamed; an existing ``out_dir`` is replaced unless ``replace=False``
    (then kept: concurrent builders of the same content). ValueError when the vocabulary size
    does not fit the text.
    """
    out_dir = Path(out_dir)
    if vocab_size < 1:
        raise ValueError(f"vocab size must be positive, got {vocab_size}")
    if not docs:
        raise ValueError("no documents to train the tokenizer on")
    threads = num_threads or default_threads()
    settings = {**DEFAULT_SETTINGS, "character_coverage": character_coverage}
    settings["input_sentence_size"] = input_sentence_size
    msg = "training %d-piece BPE tokenizer on %d documents (%d threads)"
    logger.info(msg, vocab_size, len(docs), threads)
    t0 = time.perf_counter()
    model = io.BytesIO()
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=training_sentences(docs),
            model_writer=model,
            vocab_size=vocab_size,
            num_threads=threads,
            minloglevel=2,
            **settings,
        )
    except RuntimeError as e:
        raise _train_error(e, vocab_size) from e
    seconds = time.perf_counter() - t0
    model_bytes = _normalized_model(model.getvalue())

    with building_dir(out_dir, replace) as tmp:
        atomic_write_bytes(tmp / MODEL_FILE, model_bytes)
        atomic_write_json(
            tmp / META_FILE,
            {
                "format": FORMAT,
                "sha256": sha256_file(tmp / MODEL_FILE),
                "vocab_size": vocab_size,
                "unk_id": UNK_ID,
                "bos_id": BOS_ID,
                "eos_id": EOS_ID,
                "pad_id": PAD_ID,
                "settings": settings,
                "num_threads": threads,
                "seed": seed,
                "train_documents": len(docs),
                "train_text_bytes": sum(len(d.encode("utf-8")) for d in docs),
                "train_seconds": round(seconds, 3),
                "sentencepiece": spm.__version__,
            },
        )
        if hf_files:
            save_hf_tokenizer(tmp, tmp)
    logger.info("tokenizer trained in %.1fs -> %s", seconds, out_dir)
    return out_dir
