"""Token shards: the encoded train/validation/test splits as memory-mapped ``.npy`` arrays.

Layout of a data directory (``--out``, default ``data/``)::

    data/
      tokenizer-<vocab>-<key>/   trained: tokenizer.model + HF files + tokenizer_meta.json
      tokenizer-{hf,sp}-<sha16>/ or: a copy of the given one (``tokenizer=DIR``)
      shards-<key>/              {train,val,test}.npy (uint16; uint32 over 65536 ids), manifest.json
      latest.json                the shards of the last call (with ``keep_latest``: the first)
      config.yaml                the resolved CLI configuration (written by the CLI)

Each split is its documents' ids with EOS after every document (a model's own HF tokenizer
also adds BOS first where its ``encode`` does). Keys are content hashes: the tokenizer key
covers the input files' bytes and the split and tokenizer settings; the shards key the inputs,
the split settings and the tokenizer's sha256. A second call with the same inputs reuses both
(only the input files are hashed); any change builds new ones beside the old. Directories and
files are built under a temporary name, fsynced and renamed.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from collections.abc import Sequence
from functools import cache
from itertools import chain
from pathlib import Path

import numpy as np

from ..fileio import atomic_open, atomic_write_json, building_dir, sha256_file, sha256_json
from .bundle import LATEST, MANIFEST, SPLIT_NAMES, SPLITS, DataBundle, load_bundle, token_dtype
from .corpus import Paths, check_fractions, read_documents, read_file, split_documents
from .records import (
    FOLDER_FILES,
    RECORDS_VERSION,
    encode_units,
    mlx_lm_folder,
    unit_key,
    uses_records,
)
from .shakespeare import default_corpus
from .tokenizer import DEFAULT_SETTINGS, DEFAULT_VOCAB_SIZE, FORMAT, MODEL_FILE, default_threads
from .tokenizer import train_tokenizer as _train_tokenizer
from .tokenizer_dir import load_tokenizer, store_tokenizer, tokenizer_kind

__all__ = ["DataBundle", "encode_documents", "load_bundle", "prepare_data"]

logger = logging.getLogger(__name__)

SHARD_FORMAT = "mlx_qat.shards/1"
READER_VERSION = 1  # bump when document parsing or splitting changes
SEPARATORS = {
    "sentencepiece": "EOS after every document; no BOS",
    "hf": "every document as the tokenizer's encode(text) (BOS first where it adds one), then EOS",
}


def encode_documents(
    tok, docs: Sequence[str], num_threads: int | None = None, chunk_chars: int = 4 << 20
) -> np.ndarray:
    """Encode ``docs`` with the tokenizer's batch API into one array, EOS after each doc (not
    doubled when a tokenizer's ``encode`` already ends with it)."""
    dtype = token_dtype(tok.vocab_size)
    threads = num_threads or default_threads()
    parts: list[np.ndarray] = []
    start = 0
    while start < len(docs):
        stop, size = start, 0
        while stop < len(docs) and (size < chunk_chars or stop == start):
            size += len(docs[stop])
            stop += 1
        ids = tok.encode_batch(docs[start:stop], num_threads=threads)
        ids = [x[:-1] if x and x[-1] == tok.eos_id else x for x in ids]
        lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(chain.from_iterable(ids), dtype=dtype, count=int(lens.sum()))
        parts.append(np.insert(flat, np.cumsum(lens), tok.eos_id))
        start = stop
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def _rel(path: Path, start: Path) -> str:
    try:
        return os.path.relpath(path.resolve(), start.resolve())
    except ValueError:  # different drives on Windows
        return str(path.resolve())


def _split_stats(docs: Sequence[str], tokens: np.ndarray, split: str, text_bytes: int | None):
    if text_bytes is None:
        text_bytes = sum(len(d.encode("utf-8")) for d in docs)
    return {
        "file": f"{split}.npy",
        "documents": len(docs),
        "tokens": int(tokens.size),
        "text_bytes": text_bytes,
        "bytes_per_token": round(text_bytes / tokens.size, 6) if tokens.size else None,
    }


def prepare_data(
    inputs: Paths | None = None,
    out_dir: str | os.PathLike = "data",
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    val_fraction: float = 0.05,
    seed: int = 0,
    *,
    test_fraction: float = 0.05,
    tokenizer: str | os.PathLike | None = None,
    num_threads: int | None = None,
    input_sentence_size: int = DEFAULT_SETTINGS["input_sentence_size"],
    character_coverage: float = DEFAULT_SETTINGS["character_coverage"],
    force: bool = False,
    keep_latest: bool = False,
) -> DataBundle:
    """Read, split, train the tokenizer, encode and store: one call, cached by content hash.

    ``inputs``: files/folders (None: `default_corpus`), split by `split_documents` into
    ``val_fraction`` validation, ``test_fraction`` test, the rest training. ``tokenizer``: an
    existing tokenizer or model directory to use instead of training one of ``vocab_size``
    (copied into ``out_dir``; a model's own encodes as mlx-lm does). ``force`` rebuilds cached
    artifacts; ``keep_latest`` leaves an existing ``latest.json`` where it points. Warns when
    the validation or test split is empty. The `DataBundle`'s ``timings``: ``hash``, ``read``,
    ``tokenizer``, ``encode`` and ``total`` seconds.
    """
    check_fractions(val_fraction, test_fraction)
    if tokenizer is None and vocab_size < 1:
        raise ValueError(f"vocab size must be positive, got {vocab_size}")
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    built = {"tokenizer": False, "shards": False}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = num_threads or default_threads()

    # A model's own tokenizer reads JSONL as mlx-lm does (text, completions, chat records);
    # an mlx-lm data folder (train.jsonl, valid.jsonl, test.jsonl) gives the splits as they are.
    records = tokenizer is not None and tokenizer_kind(tokenizer) == "hf"
    folder = mlx_lm_folder(inputs)
    files = list(folder.values()) if folder else default_corpus(inputs)
    t0 = time.perf_counter()
    fingerprint = [
        {"path": str(f), "sha256": sha256_file(f), "bytes": f.stat().st_size} for f in files
    ]
    split_key = {
        "reader": READER_VERSION,
        "inputs": [f["sha256"] for f in fingerprint],
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "seed": seed,
        **({"records": RECORDS_VERSION} if records else {}),
        **({"given_splits": sorted(folder)} if folder else {}),
    }
    timings["hash"] = time.perf_counter() - t0

    @cache
    def splits() -> tuple[list, list, list]:
        t = time.perf_counter()
        if folder:
            parts = tuple(read_file(folder[s], records) if s in folder else [] for s in SPLITS)
            docs = [d for part in parts for d in part]
        else:
            docs = read_documents(files, records)
            key = unit_key if records else None
            parts = split_documents(docs, val_fraction, seed, test_fraction, key)
        timings["read"] = time.perf_counter() - t
        msg = "read %d documents from %d files (%d train, %d val, %d test)"
        logger.info(msg, len(docs), len(files), *map(len, parts))
        return parts

    if tokenizer is None:
        settings = {**DEFAULT_SETTINGS, "character_coverage": character_coverage}
        settings["input_sentence_size"] = input_sentence_size
        tok_key = sha256_json(
            {**split_key, "format": FORMAT, "vocab_size": vocab_size, "settings": settings}
        )
        tok_dir = out / f"tokenizer-{vocab_size}-{tok_key[:16]}"
        if force or not (tok_dir / MODEL_FILE).is_file():
            train_docs = splits()[0]
            if not train_docs:
                raise ValueError(
                    "the training split is empty; lower --val-fraction or --test-fraction"
                )
            t = time.perf_counter()
            _train_tokenizer(
                train_docs,
                tok_dir,
                vocab_size,
                num_threads=threads,
                seed=seed,
                character_coverage=character_coverage,
                input_sentence_size=input_sentence_size,
                replace=force or tok_dir.exists(),
            )
            timings["tokenizer"] = time.perf_counter() - t
            built["tokenizer"] = True
        else:
            logger.info("reusing tokenizer %s", tok_dir)
    else:  # a copy inside `out`: the data folder never points outside itself
        tok_dir, built["tokenizer"] = store_tokenizer(tokenizer, out)
        logger.info("tokenizer of %s (in %s)", tokenizer, tok_dir)
    tok = load_tokenizer(tok_dir)

    template = getattr(getattr(tok, "hf", None), "chat_template", None) if records else None
    shard_key = sha256_json(
        {
            **split_key,
            "format": SHARD_FORMAT,
            "tokenizer": tok.sha256,
            # the tokenizer's identity leaves the chat template out; chat records depend on it
            **({"chat_template": sha256_json(template)} if template else {}),
        }
    )
    shard_dir = out / f"shards-{shard_key[:16]}"
    if force or not (shard_dir / MANIFEST).is_file():
        split_docs = dict(zip(SPLITS, splits()))
        t = time.perf_counter()
        masks: dict[str, np.ndarray] = {}
        nbytes: dict[str, int | None] = dict.fromkeys(SPLITS)
        if records:
            dtype = token_dtype(tok.vocab_size)
            encoded = {s: encode_units(tok, d, dtype, threads) for s, d in split_docs.items()}
            arrays, masks, nbytes = ({s: e[i] for s, e in encoded.items()} for i in range(3))
            if not any(uses_records(d) for d in split_docs.values()):
                masks = {}
        else:
            arrays = {s: encode_documents(tok, d, threads) for s, d in split_docs.items()}
        timings["encode"] = time.perf_counter() - t
        stats = {s: _split_stats(d, arrays[s], s, nbytes[s]) for s, d in split_docs.items()}
        for s, m in masks.items():
            stats[s].update(mask=f"{s}.mask.npy", prompt_tokens=int(m.size - m.sum()))
        manifest = {
            "format": SHARD_FORMAT,
            "key": shard_key,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "tokenizer": {
                "sha256": tok.sha256,
                "dir": _rel(tok_dir, shard_dir),
                "kind": tok.kind,
                **({"source": str(Path(tokenizer).resolve())} if tokenizer is not None else {}),
            },
            "vocab_size": tok.vocab_size,
            "dtype": token_dtype(tok.vocab_size).name,
            "bos_id": tok.bos_id,
            "eos_id": tok.eos_id,
            "document_separator": SEPARATORS[tok.kind],
            "inputs": fingerprint,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "seed": seed,
            **({"given_splits": {s: f.name for s, f in folder.items()}} if folder else {}),
            "splits": stats,
            **{
                k: {s: stats[s][k] for s in SPLITS}
                for k in ("tokens", "documents", "text_bytes", "bytes_per_token")
            },
        }
        with building_dir(shard_dir, replace=True) as tmp:
            for s in SPLITS:
                with atomic_open(tmp / f"{s}.npy") as f:
                    np.save(f, arrays[s])
                if s in masks:
                    with atomic_open(tmp / f"{s}.mask.npy") as f:
                        np.save(f, masks[s])
            atomic_write_json(tmp / MANIFEST, manifest)
        built["shards"] = True
        logger.info("wrote %s tokens to %s", manifest["tokens"], shard_dir)
    else:
        logger.info("reusing shards %s", shard_dir)

    bundle = load_bundle(shard_dir, tokenizer_dir=tok_dir)
    if not (keep_latest and (out / LATEST).is_file()):
        pointer = {"shards": shard_dir.name, "tokenizer": _rel(tok_dir, out)}
        atomic_write_json(out / LATEST, pointer)
    docs = bundle.manifest["documents"]
    for split, frac in (("val", val_fraction), ("test", test_fraction)):
        if docs.get(split, 1):
            continue
        if folder:
            where = inputs if isinstance(inputs, str | os.PathLike) else inputs[0]
            msg = "the %s split is empty: the mlx-lm data folder %s has no %s with records"
            logger.warning(msg, SPLIT_NAMES[split], where, FOLDER_FILES[split])
            continue
        n = sum(docs.values())
        fix = f"raise --{split}-fraction" if n > 2 and frac > 0 else "add text"
        msg = (
            "the %s split is empty (%d document(s), %s fraction %s): documents are separated by "
            "blank lines and each split needs distinct ones; %s or blank lines between documents"
        )
        logger.warning(msg, SPLIT_NAMES[split], n, split, frac, fix)
    timings["total"] = time.perf_counter() - t_start
    bundle.timings = timings
    bundle.built = built
    return bundle
