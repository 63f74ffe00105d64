"""The tokenizer an export ships: data files only, the one the run's data was encoded with.

* Only tokenizer *data* files are shipped (`mlx_qat.data.tokenizer_dir.is_tokenizer_file`):
  vocabularies, merges, sentencepiece models, special tokens, chat templates, generation
  defaults. Never code: a tokenizer directory's `*.py` is not copied and `auto_map` (which
  points `transformers` at such code) is removed from `tokenizer_config.json`.
* A model's own Hugging Face tokenizer (a run fine-tuning `--model DIR`, or an mlx-lm model
  converted) is shipped as its files are, byte for byte (`auto_map` aside). An `mlx_qat.data`
  sentencepiece tokenizer ships the HF files `save_hf_tokenizer` derives from it.
* When the run records which tokenizer its data was encoded with (`mlx_qat.data`'s
  `tokenizer_sha256`, see `Source.recorded_tokenizer`), the tokenizer to ship must have that
  hash (`check_recorded`), and its vocabulary must fit the model's embedding (`check_vocab`).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from ..data.tokenizer_dir import (  # noqa: F401  (is_tokenizer_file: re-exported)
    REMOTE_CODE_KEYS,
    copy_tokenizer_files,
    has_tokenizer,
    is_tokenizer_file,
    tokenizer_kind,
)
from ..data.tokenizer_dir import tokenizer_sha256 as _tokenizer_sha256
from .errors import ConvertError

logger = logging.getLogger(__name__)


def tokenizer_sha256(tokenizer_dir: Path) -> str | None:
    """`mlx_qat.data.tokenizer_sha256` of `tokenizer_dir`; None when it holds no tokenizer."""
    if not has_tokenizer(tokenizer_dir):
        return None
    return _tokenizer_sha256(tokenizer_dir)


def check_recorded(tokenizer_dir: Path, recorded: tuple[str, str] | None, source) -> None:
    """Refuse a tokenizer whose hash is not the one the run's data was encoded with.

    `recorded`: (sha256, where it is recorded), or None when the run records none.
    """
    if recorded is None or tokenizer_dir is None:
        return
    want, where = recorded
    have = tokenizer_sha256(Path(tokenizer_dir))
    if have != want:
        raise ConvertError(
            f"tokenizer {tokenizer_dir} (sha256 {have}) is not the tokenizer {source} was "
            f"trained with: its data was encoded with tokenizer sha256 {want} (recorded in "
            f"{where}). Shipping it would make the model read other tokens; pass --tokenizer "
            "with the data's own tokenizer directory (the one beside its shards)"
        )


def check_vocab(tokenizer_dir: Path, loadable: Path, vocab_size: int | None) -> None:
    """Refuse a tokenizer mlx-lm cannot load, or with more ids than the embedding has rows."""
    from mlx_lm.utils import load_tokenizer

    from ..mlxlm_compat import hf_tokenizer

    try:
        tokenizer = load_tokenizer(Path(loadable))
    except (OSError, ValueError) as e:
        raise ConvertError(f"tokenizer {loadable}: mlx-lm cannot load it ({e})") from e
    n = len(hf_tokenizer(tokenizer))
    if vocab_size is not None and n > vocab_size:
        raise ConvertError(
            f"tokenizer {tokenizer_dir} has {n} tokens but the model's vocab_size is "
            f"{vocab_size}: it is not the tokenizer this model was trained with; pass "
            "--tokenizer with the run's own tokenizer/ directory"
        )


def save_tokenizer(path: Path, tokenizer_dir: Path | None, vocab_size: int | None = None) -> None:
    """Write the tokenizer files `mlx_lm.load` needs into `path`: data files only.

    An `mlx_qat.data` tokenizer (sentencepiece `tokenizer.model` + `tokenizer_meta.json`) goes
    through `save_hf_tokenizer` (into a scratch directory first); any other tokenizer must load
    with mlx-lm and is copied unchanged. What is left out is logged; a tokenizer with more ids
    than `vocab_size` is refused.
    """
    if tokenizer_dir is None:
        raise ConvertError(
            "no tokenizer: the checkpoint is not inside a run directory with tokenizer/; "
            "pass --tokenizer DIR (the run's tokenizer/ or any Hugging Face tokenizer dir)"
        )
    tokenizer_dir = Path(tokenizer_dir)
    if not tokenizer_dir.is_dir():
        raise ConvertError(f"--tokenizer {tokenizer_dir}: no such directory")
    try:
        sentencepiece = tokenizer_kind(tokenizer_dir) == "sentencepiece"
    except FileNotFoundError:
        sentencepiece = False  # mlx-lm's loader names what is missing
    with tempfile.TemporaryDirectory(prefix="mlx_qat_tokenizer_") as scratch:
        source = tokenizer_dir  # the model's own files, unchanged
        if sentencepiece:
            from ..data import save_hf_tokenizer

            source = Path(scratch)
            try:
                save_hf_tokenizer(tokenizer_dir, source)
            except (FileNotFoundError, OSError, RuntimeError) as e:
                raise ConvertError(f"tokenizer {tokenizer_dir}: cannot convert it ({e})") from e
        check_vocab(tokenizer_dir, source, vocab_size)
        dropped = copy_tokenizer_files(source, path)
    if dropped:
        logger.warning(
            "tokenizer %s: %s removed from tokenizer_config.json (it points at code, which an "
            "export never ships)",
            tokenizer_dir,
            ", ".join(dropped),
        )
    code = sorted(p.name for p in tokenizer_dir.glob("*.py"))
    if code:
        logger.warning(
            "tokenizer %s: not shipped: %s (code; an export ships tokenizer data files only)",
            tokenizer_dir,
            ", ".join(code),
        )
