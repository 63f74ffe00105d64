"""What a tokenizer directory is: its kind, its identity (one hash), loading it (a
model's own Hugging Face tokenizer: `HFTokenizer`), copying it.

Two kinds, told apart by their files (`tokenizer_kind`):

* ``"sentencepiece"``: a tokenizer `mlx_qat.data` trained (``tokenizer.model`` beside
  ``tokenizer_meta.json``, or ``tokenizer.model`` alone), or the Hugging Face files mlx_qat
  derives from one (`save_hf_tokenizer`: what a run's ``tokenizer/`` and an export hold; its
  ``tokenizer_config.json`` is exactly `hf_configs` of its ``tokenizer.model``, ``auto_map``
  aside). Encoded with sentencepiece (`Tokenizer`); the HF files encode identically.
* ``"hf"``: any other tokenizer `mlx_lm` loads (``tokenizer.json``, ``tokenizer_config.json``,
  vocab/merges files, ``*.tiktoken``): a Hugging Face / mlx-lm model's own tokenizer, encoded
  as `mlx_lm` encodes (`HFTokenizer`).

Identity (`tokenizer_sha256`), what token shards, checkpoints, eval and convert compare:

* sentencepiece: the sha256 of ``tokenizer.model`` (as every shard and checkpoint has
  recorded since the first release);
* hf: the sha256 of the lines ``"<name>\\0<sha256 of its content>\\n"`` over the files that
  decide the ids (`ID_FILES`, `TOKENIZER_PATTERNS`) present in the directory, in sorted name
  order; ``tokenizer_config.json`` counts as its canonical JSON without ``auto_map`` and
  ``chat_template`` (`NON_ID_KEYS`). So the shipped copy (``auto_map`` removed) and an edited
  chat template keep the identity; any change to the vocabulary, merges, normalisation,
  special tokens or BOS/EOS settings changes it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from ..fileio import new_tmp_dir, publish_dir, sha256_file, sha256_json
from ..mlxlm_compat import hf_tokenizer
from .hf import hf_configs
from .tokenizer import META_FILE, MODEL_FILE
from .tokenizer import Tokenizer as SentencePieceTokenizer
from .tokenizer import tokenizer_sha256 as sentencepiece_sha256

# What `tokenizer.save_pretrained` and mlx-lm write for the tokenizers mlx-lm loads: the data
# files a tokenizer copy (data dir, run, export) holds. Never code (`*.py`).
TOKENIZER_FILES = frozenset(
    {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "tokenizer.model",
        "spiece.model",
        "sentencepiece.bpe.model",
        "vocab.json",
        "vocab.txt",
        "merges.txt",
        "chat_template.jinja",
        "chat_template.json",
        "generation_config.json",
    }
)
TOKENIZER_PATTERNS = ("*.tiktoken",)
# The files that decide which ids a text becomes (chat templates and generation defaults do not).
ID_FILES = TOKENIZER_FILES - {"chat_template.jinja", "chat_template.json", "generation_config.json"}
CONFIG = "tokenizer_config.json"
REMOTE_CODE_KEYS = ("auto_map",)  # keys that make `transformers` import code from the directory
NON_ID_KEYS = REMOTE_CODE_KEYS + ("chat_template",)
KINDS = ("sentencepiece", "hf")


def is_tokenizer_file(name: str) -> bool:
    """True for a tokenizer data file a copy (data dir, run, export) may hold."""
    return name in TOKENIZER_FILES or any(fnmatch.fnmatch(name, p) for p in TOKENIZER_PATTERNS)


def _id_file(name: str) -> bool:
    return name in ID_FILES or any(fnmatch.fnmatch(name, p) for p in TOKENIZER_PATTERNS)


def _read_config(path: Path) -> dict | None:
    try:
        cfg = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) else None


def _derived_from_sentencepiece(path: Path) -> bool:
    """True when the HF files in `path` are the ones mlx_qat derives from its tokenizer.model."""
    cfg = _read_config(path)
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
    if any(_id_file(p.name) for p in path.iterdir() if p.is_file()):
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
    holds none. This is what shards (``manifest["tokenizer"]["sha256"]``) and checkpoints
    (``state["tokenizer_sha256"]``) record."""
    path = Path(path)
    if tokenizer_kind(path) == "sentencepiece":
        return sentencepiece_sha256(path)
    h = hashlib.sha256()
    for f in sorted((p for p in path.iterdir() if p.is_file() and _id_file(p.name)), key=str):
        if f.name == CONFIG:
            cfg = _read_config(path)
            if cfg is None:
                raise ValueError(f"tokenizer {path}: {CONFIG} is not a JSON object")
            digest = sha256_json({k: v for k, v in cfg.items() if k not in NON_ID_KEYS})
        else:
            digest = sha256_file(f)
        h.update(f"{f.name}\0{digest}\n".encode())
    return h.hexdigest()


class HFTokenizer:
    """A Hugging Face / mlx-lm model's own tokenizer (the ``"hf"`` kind), as `mlx_qat.data`
    encodes with it: ``encode``/``decode`` plus the special ids.

    Loaded with mlx-lm's loader (`mlx_lm.utils.load_tokenizer`, what `mlx_lm.load` calls), and
    used exactly as mlx-lm uses it on a prompt:

    * a document becomes ``tokenizer.encode(text)``: the tokenizer's own special tokens
      included, i.e. BOS first for tokenizers that add one (Llama, Mistral, Gemma: what
      ``mlx_lm.generate`` feeds the model), none for those that do not (GPT-2 style, Qwen).
      Special-token text in a document (``"<|endoftext|>"``) is read as that special token, as
      ``encode`` reads it;
    * the tokenizer's ``eos_token_id`` follows every document (unless ``encode`` already ended
      it with EOS), so the model sees the document boundaries it was pretrained with.

    `encode_batch` gives the same ids as ``encode`` per text, through the tokenizer's batch call
    (parallel in the Rust `tokenizers` library) when its class does not override ``encode``.

    ``sha256`` is `tokenizer_sha256` of the directory (token shards record it and refuse
    another tokenizer). Raises ValueError naming the directory when mlx-lm cannot load it or
    it has no EOS token.
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

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (``len(tokenizer)``)."""
        return len(self.hf)

    @property
    def bos_id(self) -> int | None:
        """BOS id, or None; in the shards only where ``encode`` adds it."""
        return self.hf.bos_token_id

    @property
    def eos_id(self) -> int:
        """EOS id, after every document in the shards."""
        return int(self.hf.eos_token_id)

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
    """The tokenizer in `path`: a sentencepiece `Tokenizer` or an `HFTokenizer` (same
    interface: ``encode``, ``encode_batch``, ``decode``, ``vocab_size``, ``bos_id``,
    ``eos_id``, ``sha256``, ``kind``, ``dir``)."""
    if tokenizer_kind(path) == "sentencepiece":
        return SentencePieceTokenizer(path)
    return HFTokenizer(path)


def copy_tokenizer_files(src: str | os.PathLike, dest: str | os.PathLike) -> list[str]:
    """Copy the tokenizer data files of `src` into the existing directory `dest`, unchanged
    except that `REMOTE_CODE_KEYS` are removed from ``tokenizer_config.json`` (code is never
    copied). Returns the keys removed."""
    src, dest = Path(src), Path(dest)
    dropped: list[str] = []
    for f in sorted(src.iterdir()):
        if not (f.is_file() and is_tokenizer_file(f.name)):
            continue
        cfg = _read_config(src) if f.name == CONFIG else None
        if cfg is not None and any(k in cfg for k in REMOTE_CODE_KEYS):
            dropped = [k for k in REMOTE_CODE_KEYS if cfg.pop(k, None) is not None]
            text = json.dumps(cfg, indent=2, ensure_ascii=False) + "\n"
            (dest / f.name).write_text(text, encoding="utf-8")
        else:
            shutil.copyfile(f, dest / f.name)
    return dropped


def store_tokenizer(src: str | os.PathLike, out_dir: str | os.PathLike) -> tuple[Path, bool]:
    """A copy of the tokenizer `src` inside `out_dir`, so that prepared data keeps the tokenizer
    it was encoded with whatever happens to `src` (and a copied data folder keeps working):
    `out_dir/tokenizer-hf-<sha16>/` (data files only, `copy_tokenizer_files`) or, for a
    sentencepiece one, `out_dir/tokenizer-sp-<sha16>/` (``tokenizer.model``, its
    ``tokenizer_meta.json`` and HF files). A sentencepiece directory already directly in
    `out_dir` (one `mlx_qat.data` trained there) is used where it is. Built aside and renamed;
    an existing copy with the same identity is reused. Returns (its path, whether it was
    copied now)."""
    src, out_dir = Path(src), Path(out_dir)
    kind, sha = tokenizer_kind(src), tokenizer_sha256(src)
    if kind == "sentencepiece" and src.is_dir() and src.resolve().parent == out_dir.resolve():
        return src, False
    dest = out_dir / f"tokenizer-{'hf' if kind == 'hf' else 'sp'}-{sha[:16]}"
    if dest.is_dir() and has_tokenizer(dest) and tokenizer_sha256(dest) == sha:
        return dest, False
    tmp = new_tmp_dir(dest)
    try:
        if src.is_file():  # a bare tokenizer.model
            shutil.copyfile(src, tmp / MODEL_FILE)
        else:
            copy_tokenizer_files(src, tmp)
            if kind == "sentencepiece" and (src / META_FILE).is_file():
                shutil.copyfile(src / META_FILE, tmp / META_FILE)
        if tokenizer_kind(tmp) != kind or tokenizer_sha256(tmp) != sha:
            # a file the identity reads was not copied
            raise ValueError(f"tokenizer {src}: its copy in {dest} is not the same tokenizer")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_dir(tmp, dest, replace=dest.exists())
    return dest, True
