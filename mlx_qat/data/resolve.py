"""The trainer's and the evaluator's view of the data pipeline.

* `open_prepared` opens prepared data (an `mlx_qat.data` output dir or a shards dir) without
  writing anything; `prepare_run_data` builds raw text (or the default corpus) into a run's own
  `data/` dir. A run never repoints a `latest.json` that exists: prepared data a user made does
  not change under them.
* `copy_tokenizer` makes `<run>/tokenizer/` the tokenizer the run's data was encoded with,
  checked by hash (`tokenizer_sha256`): a stale one left by an earlier attempt is replaced.
* `check_split` names a missing, empty or too-small split and the fix, before any batch is cut.
* `open_eval_data` opens the data `mlx_qat.eval` scores with (its validation or test split).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from .tokenizer import tokenizer_sha256

logger = logging.getLogger(__name__)

TOKENIZER = "tokenizer"
RUN_DATA = "data"


def is_prepared(path: str | os.PathLike) -> bool:
    """True for an `mlx_qat.data` output dir (latest.json) or a shards dir (manifest.json)."""
    p = Path(path)
    return p.is_dir() and ((p / "latest.json").is_file() or (p / "manifest.json").is_file())


def open_prepared(data: list[str] | None):
    """The `DataBundle` of `data` when it is one prepared dir, else None (raw inputs, or the
    default corpus, which `prepare_run_data` builds). Reads only.

    Raises FileNotFoundError naming raw inputs that do not exist.
    """
    from .shards import load_bundle

    if data and len(data) == 1 and is_prepared(data[0]):
        return load_bundle(data[0])
    missing = [d for d in data or [] if not Path(d).exists()]
    if missing:
        raise FileNotFoundError(
            f"--data {' '.join(missing)}: no such file or directory; give a prepared data "
            "dir (python -m mlx_qat.data --out DIR) or text files/folders"
        )
    return None


def prepare_run_data(data: list[str] | None, out: str | os.PathLike, vocab_size: int, seed: int):
    """Tokenize raw `data` (None: the default corpus) into `out` (by default `<run>/data`).

    The tokenizer and shards directories are content-addressed, so sharing `out` between runs
    only adds directories; `latest.json` is written only when `out` has none.
    """
    from .shards import prepare_data

    logger.info("preparing data from %s into %s", data or "the default corpus", out)
    return prepare_data(data or None, out, vocab_size=vocab_size, seed=seed, keep_latest=True)


def resolve_data(data: list[str] | None, data_out: str, vocab_size: int, seed: int = 0):
    """`open_prepared(data)`, or `prepare_run_data(data, data_out, ...)` for raw inputs."""
    return open_prepared(data) or prepare_run_data(data, data_out, vocab_size, seed)


def check_split(bundle, split: str, seq_len: int) -> None:
    """Raise ValueError naming the data, the split and the fix when `split` is missing (the
    test split of data prepared before there was one) or holds fewer than `seq_len + 1`
    tokens (one window)."""
    from .shards import SPLIT_NAMES

    tokens = len(bundle.split(split))
    if tokens >= seq_len + 1:
        return
    docs = bundle.manifest.get("documents", {}).get(split, "?")
    where = f"data {bundle.path}: the {SPLIT_NAMES[split]} split"
    if tokens == 0:
        frac = bundle.manifest.get(f"{split}_fraction")
        fix = (
            f"it was prepared with {split}_fraction {frac}; documents are separated by blank "
            "lines and each split needs distinct ones: add text or blank lines between "
            f"documents (or raise --{split}-fraction) and prepare again"
            if split != "train"
            else "lower --val-fraction/--test-fraction or add text, and prepare again"
        )
        raise ValueError(f"{where} is empty ({docs} documents, 0 tokens); {fix}")
    raise ValueError(
        f"{where} has {tokens} tokens ({docs} documents), fewer than one window of seq_len + 1 "
        f"= {seq_len + 1}; use a shorter --seq-len or more text"
    )


def copy_tokenizer(bundle, run_dir: str | os.PathLike) -> Path:
    """`run_dir/tokenizer/`: the sentencepiece dir of `bundle` plus HF files (built aside,
    renamed). An existing one is kept only when its hash is the bundle's: a tokenizer left by
    another attempt is replaced (the caller has refused a resume with another tokenizer)."""
    from .hf import save_hf_tokenizer

    dest = Path(run_dir) / TOKENIZER
    want = tokenizer_sha256(bundle.tokenizer_dir)
    if dest.is_dir():
        try:
            have = tokenizer_sha256(dest)
        except FileNotFoundError:
            have = None
        if have == want:
            return dest
        logger.warning(
            "%s: tokenizer %s is not the data's (%s); replacing it", dest, have, want[:16]
        )
    tmp = dest.with_name(f"{TOKENIZER}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(bundle.tokenizer_dir, tmp)
    save_hf_tokenizer(bundle.tokenizer_dir, tmp)
    if dest.exists():
        old = dest.with_name(f"{TOKENIZER}.tmp-old-{os.getpid()}")
        os.replace(dest, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def open_eval_data(
    data, batch_size: int, seq_len: int, max_batches: int | None, split: str = "val"
):
    """(bundle, fixed batches, bytes per token) of split `split` ("val" or "test") of
    prepared `data`; ValueError naming the fix when the data has no such split."""
    from .batches import eval_batches
    from .shards import load_bundle

    path = data[0] if isinstance(data, list) else data
    if not is_prepared(path):
        raise ValueError(
            f"data {path}: not prepared data (no latest.json/manifest.json); pass --data with "
            "an mlx_qat.data output dir"
        )
    if split not in ("val", "test"):
        raise ValueError(f"split {split!r}: choose val or test")
    bundle = load_bundle(path)
    check_split(bundle, split, seq_len)
    return (
        bundle,
        eval_batches(bundle.split(split), batch_size, seq_len, max_batches),
        float(bundle.bytes_per_token[split]),
    )
