"""The tokenizer an export ships: data files only, the one the run's data was encoded with.

* Only tokenizer *data* files are shipped (`TOKENIZER_FILES`, `TOKENIZER_PATTERNS`): vocabularies,
  merges, sentencepiece models, special tokens, chat templates, generation defaults. Never code:
  a tokenizer directory's `*.py` is not copied and `auto_map` (which points `transformers` at
  such code) is removed from `tokenizer_config.json`.
* When the run records which tokenizer its data was encoded with (a sha256, see
  `Source.recorded_tokenizer`), the tokenizer to ship must have that hash (`check_recorded`).
* Its vocabulary must fit the model's embedding (`check_vocab`): a tokenizer with more ids than
  `vocab_size` is one the model was not trained with.

The hash of a tokenizer directory (`tokenizer_sha256`) is the sha256 of its `tokenizer.model`
(sentencepiece, what `mlx_qat.data` trains and its manifests record), else of its
`tokenizer.json` (a Hugging Face tokenizer).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import shutil
import tempfile
from pathlib import Path

from ..fileio import sha256_file
from .errors import ConvertError

logger = logging.getLogger(__name__)

# What `tokenizer.save_pretrained` and mlx-lm write for the tokenizers mlx-lm loads.
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
REMOTE_CODE_KEYS = ("auto_map",)  # keys that make `transformers` import code from the directory


def is_tokenizer_file(name: str) -> bool:
    """True for a tokenizer data file an export may ship."""
    return name in TOKENIZER_FILES or any(fnmatch.fnmatch(name, p) for p in TOKENIZER_PATTERNS)


def tokenizer_sha256(tokenizer_dir: Path) -> str | None:
    """sha256 of `tokenizer.model` (sentencepiece: `mlx_qat.data.tokenizer_sha256`, what runs
    and shards record), else of `tokenizer.json`; None if neither."""
    from ..data import tokenizer_sha256 as sentencepiece_sha256

    tokenizer_dir = Path(tokenizer_dir)
    if (tokenizer_dir / "tokenizer.model").is_file():
        return sentencepiece_sha256(tokenizer_dir)
    if (tokenizer_dir / "tokenizer.json").is_file():
        return sha256_file(tokenizer_dir / "tokenizer.json")
    return None


def _is_sentencepiece(tokenizer_dir: Path) -> bool:
    # An `mlx_qat.data` tokenizer: tokenizer.model + tokenizer_meta.json (HF files optional).
    return (tokenizer_dir / "tokenizer.model").is_file() and (
        (tokenizer_dir / "tokenizer_meta.json").is_file()
        or not (tokenizer_dir / "tokenizer_config.json").is_file()
    )


def check_recorded(tokenizer_dir: Path, recorded: tuple[str, str] | None, source) -> None:
    """Refuse a tokenizer whose hash is not the one the run's data was encoded with.

    Args:
        tokenizer_dir: the tokenizer to ship.
        recorded: (sha256, where it is recorded), or None when the run records none.
        source: the input, for the message.
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


def check_vocab(tokenizer, tokenizer_dir: Path, vocab_size: int | None) -> None:
    """Refuse a tokenizer with more ids than the model's embedding has rows."""
    n = len(getattr(tokenizer, "_tokenizer", tokenizer))
    if vocab_size is not None and n > vocab_size:
        raise ConvertError(
            f"tokenizer {tokenizer_dir} has {n} tokens but the model's vocab_size is "
            f"{vocab_size}: it is not the tokenizer this model was trained with; pass "
            "--tokenizer with the run's own tokenizer/ directory"
        )


def _load(tokenizer_dir: Path):
    from mlx_lm.utils import load_tokenizer

    try:
        return load_tokenizer(Path(tokenizer_dir))
    except (OSError, ValueError) as e:
        raise ConvertError(f"tokenizer {tokenizer_dir}: mlx-lm cannot load it ({e})") from e


def save_tokenizer(path: Path, tokenizer_dir: Path | None, vocab_size: int | None = None) -> None:
    """Write the tokenizer files `mlx_lm.load` needs into `path`: data files only.

    An `mlx_qat.data` tokenizer (sentencepiece `tokenizer.model` + `tokenizer_meta.json`) goes
    through `save_hf_tokenizer`; anything else is loaded and re-saved by mlx-lm's tokenizer
    loader, as `mlx_lm.convert` does. Both are written to a scratch directory first, from which
    only `is_tokenizer_file` names are copied (`auto_map` removed); what is left out is logged.

    Args:
        path: the (staged) output directory.
        tokenizer_dir: the tokenizer to ship.
        vocab_size: the model's vocabulary; a tokenizer with more ids is refused.
    """
    if tokenizer_dir is None:
        raise ConvertError(
            "no tokenizer: the checkpoint is not inside a run directory with tokenizer/; "
            "pass --tokenizer DIR (the run's tokenizer/ or any Hugging Face tokenizer dir)"
        )
    tokenizer_dir = Path(tokenizer_dir)
    if not tokenizer_dir.is_dir():
        raise ConvertError(f"--tokenizer {tokenizer_dir}: no such directory")
    with tempfile.TemporaryDirectory(prefix="mlx_qat_tokenizer_") as scratch:
        scratch = Path(scratch)
        if _is_sentencepiece(tokenizer_dir):
            from ..data import save_hf_tokenizer

            try:
                save_hf_tokenizer(tokenizer_dir, scratch)
            except (FileNotFoundError, OSError, RuntimeError) as e:
                raise ConvertError(f"tokenizer {tokenizer_dir}: cannot convert it ({e})") from e
            check_vocab(_load(scratch), tokenizer_dir, vocab_size)
        else:
            tok = _load(tokenizer_dir)
            check_vocab(tok, tokenizer_dir, vocab_size)
            tok.save_pretrained(str(scratch))
            # mlx_lm.utils.save carries generation defaults over too (never the *.py it copies).
            if (tokenizer_dir / "generation_config.json").is_file():
                shutil.copy(tokenizer_dir / "generation_config.json", scratch)
        _copy_data_files(scratch, path, tokenizer_dir)
    _report_left_out(tokenizer_dir)


def _copy_data_files(scratch: Path, path: Path, tokenizer_dir: Path) -> None:
    for f in sorted(scratch.iterdir()):
        if not (f.is_file() and is_tokenizer_file(f.name)):
            continue
        if f.name == "tokenizer_config.json":
            cfg = json.loads(f.read_text(encoding="utf-8"))
            dropped = [k for k in REMOTE_CODE_KEYS if cfg.pop(k, None) is not None]
            if dropped:
                logger.warning(
                    "tokenizer %s: %s removed from tokenizer_config.json (it points at code, "
                    "which an export never ships)",
                    tokenizer_dir,
                    ", ".join(dropped),
                )
            (path / f.name).write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
        else:
            shutil.copyfile(f, path / f.name)


def _report_left_out(tokenizer_dir: Path) -> None:
    code = sorted(p.name for p in tokenizer_dir.glob("*.py"))
    if code:
        logger.warning(
            "tokenizer %s: not shipped: %s (code; an export ships tokenizer data files only)",
            tokenizer_dir,
            ", ".join(code),
        )
