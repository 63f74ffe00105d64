"""A tokenizer directory: its kind, its identity (one hash), loading and copying it. Two kinds,
told apart by their files (`tokenizer_kind`):

* ``"sentencepiece"``: ``tokenizer.model`` (beside ``tokenizer_meta.json``, alone, or with the
  HF files `save_hf_tokenizer` derives from it, ``auto_map`` aside), encoded by `Tokenizer`;
* ``"hf"``: any other tokenizer `mlx_lm` loads (``tokenizer.json``, vocab/merges files,
  ``*.tiktoken``), encoded as `mlx_lm` encodes (`HFTokenizer`).
Identity (`tokenizer_sha256`, what shards, checkpoints, eval and convert compare):
sentencepiece: the sha256 of ``tokenizer.model``; hf: the sha256 of the lines
``"<name>\\0<sha256 of its content>\\n"`` over the files present that decide the ids
(`ID_FILES`, `TOKENIZER_PATTERNS`), in sorted name order, ``tokenizer_config.json`` counted as
its canonical JSON without `NON_ID_KEYS`. So the shipped copy (``auto_map`` removed) and an
edited chat template keep the identity; any change to what decides the ids changes it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from ..fileio import building_dir, read_json_object, sha256_file, sha256_json
from ..mlxlm_compat import hf_tokenizer
from .hf import hf_configs
from .tokenizer import META_FILE, MODEL_FILE
from .tokenizer import Tokenizer as SentencePieceTokenizer

# The files that decide which ids a text becomes, and (TOKENIZER_FILES) all the data files a
# tokenizer copy (data dir, run, export) holds: what `save_pretrained` and mlx-lm write; never code.
ID_FILES = frozenset(
    "tokenizer.json tokenizer_config.json special_tokens_map.json added_tokens.json vocab.json "
    "vocab.txt merges.txt tokenizer.model spiece.model sentencepiece.bpe.model".split()
)
TOKENIZER_FILES = ID_FILES | {"chat_template.jinja", "chat_template.json", "generation_config.json"}
TOKENIZER_PATTERNS = ("*.tiktoken",)
CONFIG = "tokenizer_config.json"
REMOTE_CODE_KEYS = ("auto_map",)  # keys that make `transformers` import code from the directory
NON_ID_KEYS = REMOTE_CODE_KEYS + ("chat_template",)


def is_tokenizer_file(name: str, names: frozenset = TOKENIZER_FILES) -> bool:
    """True for a tokenizer data file a copy (data dir, run, export) may hold."""
    return name in names or any(fnmatch.fnmatch(name, p) for p in TOKENIZER_PATTERNS)


def _derived_from_sentencepiece(path: Path) -> bool:
    cfg = read_json_object(path / CONFIG)
    if cfg is None:
        return False
    try:
        want, _ = hf_configs(path / MODEL_FILE)
    except Exception:  # not a sentencepiece model (e.g. a tiktoken file of that name)
        return False
    return {k: v for k, v in cfg.items() if k not in REMOTE_CODE_KEYS} == want


def tokenizer_kind(path: str | os.PathLike) -> str:
    """``"sentencepiece"`` or ``"hf"`` (see the module); FileNotFoundError naming `path` and
    the fix when it holds no tokenizer."""
    path = Path(path)
    if path.is_file() and path.suffix == ".model":
        return "sentencepiece"
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer {path}: no such directory")
    if (path / MODEL_FILE).is_file() and (
        (path / META_FILE).is_file()
        or not (path / CONFIG).is_file()
        or _derived_from_sentencepiece(path)
    ):
        return "sentencepiece"
    if any(is_tokenizer_file(p.name, ID_FILES) for p in path.iterdir() if p.is_file()):
        return "hf"
    raise FileNotFoundError(
        f"tokenizer {path}: no tokenizer in it (no {MODEL_FILE}, tokenizer.json or other "
        "Hugging Face tokenizer files); train one with `python -m mlx_qat data`, or give a "
        "Hugging Face / mlx-lm model directory"
    )


def has_tokenizer(path: str | os.PathLike) -> bool:
    """True when `path` is a directory holding a tokenizer of either kind."""
    try:
        tokenizer_kind(path)
    except FileNotFoundError:
        return False
    return True


def tokenizer_sha256(path: str | os.PathLike) -> str:
    """The identity of the tokenizer in `path` (see the module); FileNotFoundError when it
    holds none."""
    path = Path(path)
    if tokenizer_kind(path) == "sentencepiece":
        return sha256_file(path / MODEL_FILE if path.is_dir() else path)
    h = hashlib.sha256()
    files = [p for p in path.iterdir() if p.is_file() and is_tokenizer_file(p.name, ID_FILES)]
    for f in sorted(files, key=str):
        if f.name == CONFIG:
            cfg = read_json_object(path / CONFIG)
            if cfg is None:
                raise ValueError(f"tokenizer {path}: {CONFIG} is not a JSON object")
            digest = sha256_json({k: v for k, v in cfg.items() if k not in NON_ID_KEYS})
        else:
            digest = sha256_file(f)
        h.update(f"{f.name}\0{digest}\n".encode())
    return h.hexdigest()


class HFTokenizer:
    """A Hugging Face / mlx-lm model's own tokenizer (the ``"hf"`` kind), loaded by mlx-lm
    (`mlx_lm.utils.load_tokenizer`) and used as mlx-lm uses it on a prompt: a document is
    ``tokenizer.encode(text)`` (BOS first where the tokenizer adds one, special-token text read
    as that token), then ``eos_token_id`` unless ``encode`` already ended with it.

    `encode_batch` gives ``encode``'s ids through the (Rust, parallel) batch call when the
    class does not override ``encode``. ``sha256`` is `tokenizer_sha256` of the directory.
    ValueError naming the directory when mlx-lm cannot load it or it has no EOS token.
    """

    kind = "hf"

    def __init__(self, path: str | os.PathLike):
        # mlx-lm and transformers take seconds to import: only when an HF tokenizer is loaded
        from mlx_lm.utils import load_tokenizer
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase

        self.dir = Path(path)
        try:
            self.wrapper = load_tokenizer(self.dir)
        except Exception as e:  # transformers raises many kinds
            raise ValueError(
                f"tokenizer {self.dir}: mlx-lm cannot load it ({type(e).__name__}: {e}); give "
                "a directory `mlx_lm.load` reads (tokenizer.json, tokenizer_config.json, ...)"
            ) from e
        self.hf = hf_tokenizer(self.wrapper)
        if self.hf.eos_token_id is None:
            raise ValueError(
                f"tokenizer {self.dir}: has no EOS token (eos_token in tokenizer_config.json); "
                "token shards end every document with EOS"
            )
        self.sha256 = tokenizer_sha256(self.dir)
        cls = type(self.hf)
        self._batchable = (
            cls.encode is PreTrainedTokenizerBase.encode
            and cls.__call__ is PreTrainedTokenizerBase.__call__
        )

    vocab_size = property(lambda self: len(self.hf), doc="Number of ids, added tokens included.")
    bos_id = property(lambda self: self.hf.bos_token_id, doc="BOS id, or None.")
    eos_id = property(lambda self: int(self.hf.eos_token_id), doc="EOS id, after every document.")

    def encode(self, text: str) -> list[int]:
        """``tokenizer.encode(text)`` as mlx-lm calls it (special tokens added)."""
        return list(self.wrapper.encode(text))

    def encode_batch(self, texts: Sequence[str], num_threads: int | None = None) -> list[list[int]]:
        """`encode` of each text (``num_threads`` is unused: the Rust library parallelises)."""
        if not self._batchable:
            return [self.encode(t) for t in texts]
        out = self.hf(list(texts), verbose=False, return_attention_mask=False)
        return [list(ids) for ids in out["input_ids"]]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` (special tokens included, as written)."""
        return self.hf.decode([int(i) for i in ids])

    def __repr__(self) -> str:
        return f"HFTokenizer({str(self.dir)!r}, vocab_size={self.vocab_size})"


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer in `path`: a sentencepiece `Tokenizer` or an `HFTokenizer` (one interface:
    ``encode[_batch]``, ``decode``, ``vocab_size``, ``bos_id``, ``eos_id``, ``sha256``, ``kind``,
    ``dir``)."""
    if tokenizer_kind(path) == "sentencepiece":
        return SentencePieceTokenizer(path)
    return HFTokenizer(path)


def copy_tokenizer_files(src: str | os.PathLike, dest: str | os.PathLike) -> list[str]:
    """Copy the tokenizer data files (never code) of `src` into the directory `dest`, without
    ``tokenizer_config.json``'s `REMOTE_CODE_KEYS`; returns the keys removed."""
    src, dest = Path(src), Path(dest)
    dropped: list[str] = []
    for f in sorted(src.iterdir()):
        if not (f.is_file() and is_tokenizer_file(f.name)):
            continue
        cfg = read_json_object(src / CONFIG) if f.name == CONFIG else None
        if cfg is not None and any(k in cfg for k in REMOTE_CODE_KEYS):
            dropped = [k for k in REMOTE_CODE_KEYS if cfg.pop(k, None) is not None]
            text = json.dumps(cfg, indent=2, ensure_ascii=False) + "\n"
            (dest / f.name).write_text(text, encoding="utf-8")
        else:
            shutil.copyfile(f, dest / f.name)
    return dropped


def store_tokenizer(src: str | os.PathLike, out_dir: str | os.PathLike) -> tuple[Path, bool]:
    """(path, copied now) of a copy of the tokenizer `src` in `out_dir`, so that prepared data
    keeps its tokenizer whatever happens to `src`: ``tokenizer-hf-<sha16>/`` or
    ``tokenizer-sp-<sha16>/``, built aside and renamed, reused when one of the same identity
    exists. A sentencepiece directory directly in `out_dir` is used where it is."""
    src, out_dir = Path(src), Path(out_dir)
    kind, sha = tokenizer_kind(src), tokenizer_sha256(src)
    if kind == "sentencepiece" and src.is_dir() and src.resolve().parent == out_dir.resolve():
        return src, False
    dest = out_dir / f"tokenizer-{'hf' if kind == 'hf' else 'sp'}-{sha[:16]}"
    if dest.is_dir() and has_tokenizer(dest) and tokenizer_sha256(dest) == sha:
        return dest, False
    with building_dir(dest, replace=True) as tmp:
        if src.is_file():  # a bare tokenizer.model
            shutil.copyfile(src, tmp / MODEL_FILE)
        else:
            copy_tokenizer_files(src, tmp)
            if kind == "sentencepiece" and (src / META_FILE).is_file():
                shutil.copyfile(src / META_FILE, tmp / META_FILE)
        if tokenizer_kind(tmp) != kind or tokenizer_sha256(tmp) != sha:
            # a file the identity reads was not copied
            raise ValueError(f"tokenizer {src}: its copy in {dest} is not the same tokenizer")
    return dest, True
