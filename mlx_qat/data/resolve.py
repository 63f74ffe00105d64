"""The trainer's view of the data pipeline: find or build the data, copy the tokenizer."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

TOKENIZER = "tokenizer"


def is_prepared(path: str | os.PathLike) -> bool:
    """True for an `mlx_qat.data` output dir (latest.json) or a shards dir (manifest.json)."""
    p = Path(path)
    return p.is_dir() and ((p / "latest.json").is_file() or (p / "manifest.json").is_file())


def resolve_data(data: list[str] | None, data_out: str, vocab_size: int, seed: int = 0):
    """A `DataBundle`: open prepared data, or build it from raw inputs / the default corpus.

    Args:
        data: None (default corpus), one prepared dir, or raw text files/folders.
        data_out: where raw inputs are tokenized (cached by content hash).
        vocab_size: tokenizer size when one is trained here.
        seed: split/tokenizer seed when built here.
    """
    from .shards import load_bundle, prepare_data

    if data and len(data) == 1 and is_prepared(data[0]):
        return load_bundle(data[0])
    if data:
        missing = [d for d in data if not Path(d).exists()]
        if missing:
            raise FileNotFoundError(
                f"--data {' '.join(missing)}: no such file or directory; give a prepared data "
                "dir (python -m mlx_qat.data --out DIR) or text files/folders"
            )
    logger.info("preparing data from %s into %s", data or "the default corpus", data_out)
    return prepare_data(data or None, data_out, vocab_size=vocab_size, seed=seed)


def copy_tokenizer(bundle, run_dir: str | os.PathLike) -> Path:
    """`run_dir/tokenizer/`: the sentencepiece dir plus HF files (built aside, renamed)."""
    from .hf import save_hf_tokenizer

    dest = Path(run_dir) / TOKENIZER
    if dest.is_dir():
        return dest
    tmp = dest.with_name(f"{TOKENIZER}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(bundle.tokenizer_dir, tmp)
    save_hf_tokenizer(bundle.tokenizer_dir, tmp)
    os.replace(tmp, dest)
    return dest


def open_eval_data(data, batch_size: int, seq_len: int, max_batches: int | None):
    """(fixed validation batches, validation bytes per token) of prepared data `data`."""
    from .batches import eval_batches
    from .shards import load_bundle

    path = data[0] if isinstance(data, list) else data
    if not is_prepared(path):
        raise ValueError(
            f"data {path}: not prepared data (no latest.json/manifest.json); pass --data with "
            "an mlx_qat.data output dir"
        )
    bundle = load_bundle(path)
    return (
        eval_batches(bundle.val, batch_size, seq_len, max_batches),
        float(bundle.bytes_per_token["val"]),
    )
