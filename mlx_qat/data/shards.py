"""Token shards: the encoded train/validation/test splits as memory-mapped ``.npy`` arrays.

Layout of a data directory (``--out``, default ``data/``)::

    data/
      tokenizer-<vocab>-<key>/   tokenizer.model + HF files + tokenizer_meta.json
      tokenizer-hf-<sha16>/      or: a copy of a model's own HF tokenizer (``tokenizer=DIR``)
      tokenizer-sp-<sha16>/      or: a copy of an mlx_qat tokenizer (``tokenizer=DIR``)
      shards-<key>/              train.npy, val.npy, test.npy (uint16, or uint32 for
                                 vocab > 65536), manifest.json
      latest.json                the shards directory of the last prepare_data call (with
                                 ``keep_latest``, as the trainer calls it: of the first one)
      config.yaml                the resolved CLI configuration (written by the CLI)

Each split is the concatenation of its documents' ids with EOS after every document (a
model's own HF tokenizer also adds BOS first where its ``encode`` does: `hf_tokenizer`). The
validation split is for choices (curves, tuning); the test split, held out the same way, is
only ever reported (the trainer's final evaluation, `mlx_qat.eval --split test`). Shards made
before the test split existed have none: they still load, with ``DataBundle.test`` None.
Keys are
content hashes: the tokenizer key covers the input files' bytes, the split settings and the
tokenizer settings; the shards key covers the inputs, the split settings and the tokenizer's
sha256. A second call with the same inputs therefore reuses both (only the input files are
hashed), and any change builds new ones beside the old. Directories are built under a
temporary name and renamed, files are written to ``name.tmp-<pid>``, fsynced and renamed.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np

from ..fileio import (
    atomic_open,
    atomic_write_json,
    new_tmp_dir,
    publish_dir,
    sha256_file,
    sha256_json,
)
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
from .tokenizer import (
    DEFAULT_SETTINGS,
    DEFAULT_VOCAB_SIZE,
    FORMAT,
    MODEL_FILE,
    Tokenizer,
    default_threads,
)
from .tokenizer import train_tokenizer as _train_tokenizer
from .tokenizer_dir import load_tokenizer as _load_tokenizer
from .tokenizer_dir import store_tokenizer, tokenizer_kind, tokenizer_sha256

logger = logging.getLogger(__name__)

SHARD_FORMAT = "mlx_qat.shards/1"
READER_VERSION = 1  # bump when document parsing or splitting changes
MANIFEST = "manifest.json"
LATEST = "latest.json"
SPLITS = ("train", "val", "test")
REQUIRED_SPLITS = ("train", "val")  # shards made before the test split have only these
SPLIT_NAMES = {"train": "training", "val": "validation", "test": "test"}
SEPARATORS = {
    "sentencepiece": "EOS after every document; no BOS",
    "hf": "every document as the tokenizer's encode(text) (BOS first where it adds one), then EOS",
}


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


@dataclass
class DataBundle:
    """Everything the trainer needs: tokenizer directory, token arrays and their manifest.

    ``train``/``val``/``test`` are read-only ``np.memmap`` arrays of token ids (EOS after each
    document); ``test`` is None for shards prepared before the test split existed.
    ``manifest["bytes_per_token"][split]`` converts a loss in nats/token into bits per byte:
    ``bpb = loss / ln(2) / bytes_per_token``. ``timings`` (seconds) and ``built`` describe this
    call only: what was built rather than reused.
    """

    path: Path
    tokenizer_dir: Path
    train: np.ndarray
    val: np.ndarray
    manifest: dict
    test: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    built: dict[str, bool] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        """Tokenizer vocabulary size."""
        return int(self.manifest["vocab_size"])

    @property
    def eos_id(self) -> int:
        """EOS id (ends every document in the shards)."""
        return int(self.manifest["eos_id"])

    @property
    def bos_id(self) -> int | None:
        """BOS id (None if the tokenizer has none); in the shards only where a model's own
        tokenizer adds it (see ``manifest["document_separator"]``)."""
        bos = self.manifest.get("bos_id")
        return None if bos is None else int(bos)

    @property
    def bytes_per_token(self) -> dict[str, float]:
        """UTF-8 text bytes per token, per split."""
        return dict(self.manifest["bytes_per_token"])

    @property
    def identity(self) -> dict:
        """What names these tokens by content (results rows carry it): the shards' key (a hash
        of the input files' sha256, the split settings and the tokenizer's sha256; None for
        shards older than the key) and the tokenizer's sha256. Read from the manifest: nothing
        is hashed again."""
        return {
            "shards_key": self.manifest.get("key"),
            "tokenizer_sha256": self.manifest["tokenizer"]["sha256"],
        }

    @property
    def has_test(self) -> bool:
        """True when the shards hold a test split (older ones have train and val only)."""
        return self.test is not None

    def split(self, name: str) -> np.ndarray:
        """The token array of split ``name`` ("train", "val" or "test").

        Raises ValueError naming the data and the fix for the test split of shards prepared
        before there was one.
        """
        if name not in SPLITS:
            raise ValueError(f"split {name!r}: choose one of {', '.join(SPLITS)}")
        array = getattr(self, name)
        if array is None:
            raise ValueError(
                f"data {self.path}: has no {SPLIT_NAMES[name]} split (prepared before "
                "mlx_qat.data held one out; its manifest lists "
                f"{', '.join(self.manifest['splits'])}); prepare the data again with "
                "`python -m mlx_qat data` for one, or use the validation split"
            )
        return array

    def loss_mask(self, name: str) -> np.ndarray | None:
        """The uint8 loss mask of split ``name`` beside its tokens (0 on the prompt tokens of
        completions/chat records, 1 elsewhere: `records.encode_units`), or None when the data
        has no prompts (every token carries loss)."""
        self.split(name)
        return self.masks.get(name)

    def tokenizer(self):
        """Load the tokenizer these shards were encoded with (a sentencepiece `Tokenizer` or
        an `HFTokenizer`)."""
        return _load_tokenizer(self.tokenizer_dir)


def encode_documents(
    tok: Tokenizer,
    docs: Sequence[str],
    num_threads: int | None = None,
    chunk_chars: int = 4 << 20,
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


def split_units(
    units: Sequence, val_fraction: float, seed: int, test_fraction: float
) -> tuple[list, list, list]:
    """`split_documents` of documents and mlx-lm records alike, each hashed by
    `records.unit_key` (a document by its text, as always)."""
    keys = [unit_key(u) for u in units]
    _, val, test = (set(p) for p in split_documents(keys, val_fraction, seed, test_fraction))
    return (
        [u for u, k in zip(units, keys) if k not in val and k not in test],
        [u for u, k in zip(units, keys) if k in val],
        [u for u, k in zip(units, keys) if k in test],
    )


def _rel(path: Path, start: Path) -> str:
    try:
        return os.path.relpath(path.resolve(), start.resolve())
    except ValueError:  # different drives on Windows
        return str(path.resolve())


def _open_split(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r")


def load_bundle(
    path: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None
) -> DataBundle:
    """Open prepared data: a shards directory, or a data directory (its ``latest.json``).

    ``tokenizer_dir`` defaults to the one recorded in the manifest. Raises ValueError, naming
    both hashes, when that tokenizer is not the one the shards were encoded with.
    """
    path = Path(path)
    if not (path / MANIFEST).is_file() and (path / LATEST).is_file():
        with open(path / LATEST, encoding="utf-8") as f:
            path = path / json.load(f)["shards"]
    manifest_file = path / MANIFEST
    if not manifest_file.is_file():
        raise FileNotFoundError(
            f"no {MANIFEST} in {path}; prepare the data first with `python -m mlx_qat data`"
        )
    with open(manifest_file, encoding="utf-8") as f:
        manifest = json.load(f)
    tok_dir = Path(tokenizer_dir) if tokenizer_dir else path / manifest["tokenizer"]["dir"]
    try:
        have = tokenizer_sha256(tok_dir)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"tokenizer for {path} not found: no tokenizer ({MODEL_FILE} or Hugging Face "
            f"files) in {tok_dir}; rebuild the data with `python -m mlx_qat data --force`"
        ) from None
    want = manifest["tokenizer"]["sha256"]
    if have != want:
        raise ValueError(
            f"tokenizer mismatch: the shards in {path} were encoded with tokenizer sha256 {want}, "
            f"but {tok_dir} has sha256 {have}. Rebuild the shards for this tokenizer "
            "(`python -m mlx_qat data --force ...`, or delete that shards folder)."
        )
    missing = [s for s in REQUIRED_SPLITS if s not in manifest["splits"]]
    if missing:
        raise ValueError(
            f"{manifest_file}: lists no {' or '.join(missing)} split; rebuild the data with "
            "`python -m mlx_qat data --force`"
        )
    arrays = {
        s: _open_split(path / manifest["splits"][s]["file"])
        for s in SPLITS
        if s in manifest["splits"]
    }
    masks = {  # shards without prompts have none: every token carries loss
        s: _open_split(path / manifest["splits"][s]["mask"])
        for s in arrays
        if "mask" in manifest["splits"][s]
    }
    if "test" not in arrays:
        logger.info("data %s: no test split (prepared before there was one)", path)
    return DataBundle(
        path, tok_dir, arrays["train"], arrays["val"], manifest, test=arrays.get("test"),
        masks=masks,
    )  # fmt: skip


def _split_stats(
    docs: Sequence[str], tokens: np.ndarray, file: str, text_bytes: int | None = None
) -> dict:
    if text_bytes is None:
        text_bytes = sum(len(d.encode("utf-8")) for d in docs)
    return {
        "file": file,
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

    The documents are split by a keyed hash (:func:`~mlx_qat.data.split_documents`):
    ``val_fraction`` of them validate (curves, tuning), ``test_fraction`` are held out as the
    test split (reported, never used for a choice), the rest train. ``inputs``: files/folders (``.txt``, ``.txt.gz``, ``.jsonl``); None means the default
    corpus (:func:`~mlx_qat.data.default_corpus`). ``tokenizer``: use this existing tokenizer
    instead of training one (``vocab_size`` is then ignored): an `mlx_qat.data` tokenizer
    directory (copied to ``out_dir/tokenizer-sp-<sha16>/`` unless it is in ``out_dir``), or any
    Hugging Face / mlx-lm model directory, whose own tokenizer is copied to
    ``out_dir/tokenizer-hf-<sha16>/`` and encodes as mlx-lm does (`hf_tokenizer`). ``force``
    rebuilds even when cached artifacts exist. ``keep_latest`` leaves an existing ``latest.json``
    pointing where it points (other runs may rely on it). Logs a warning when the validation
    or the test split is empty. Returns a :class:`DataBundle` whose ``timings`` has ``hash``, ``read``,
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

    cache: dict[str, tuple[list, list, list]] = {}

    def splits() -> tuple[list, list, list]:
        if "docs" not in cache:
            t = time.perf_counter()
            if folder:
                cache["docs"] = tuple(
                    read_file(folder[s], records) if s in folder else [] for s in SPLITS
                )
                docs = [d for part in cache["docs"] for d in part]
            else:
                docs = read_documents(files, records)
                split = split_units if records else split_documents
                cache["docs"] = split(docs, val_fraction, seed, test_fraction)
            timings["read"] = time.perf_counter() - t
            logger.info(
                "read %d documents from %d files (%d train, %d val, %d test)",
                len(docs),
                len(files),
                *map(len, cache["docs"]),
            )
        return cache["docs"]

    if tokenizer is None:
        settings = dict(DEFAULT_SETTINGS)
        settings.update(
            character_coverage=character_coverage, input_sentence_size=input_sentence_size
        )
        tok_key = sha256_json(
            {
                **split_key,
                "format": FORMAT,
                "vocab_size": vocab_size,
                "settings": settings,
            }
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
    tok = _load_tokenizer(tok_dir)

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
            arrays = {s: e[0] for s, e in encoded.items()}
            nbytes = {s: e[2] for s, e in encoded.items()}
            if any(uses_records(d) for d in split_docs.values()):
                masks = {s: e[1] for s, e in encoded.items()}
        else:
            arrays = {s: encode_documents(tok, d, threads) for s, d in split_docs.items()}
        timings["encode"] = time.perf_counter() - t
        stats = {
            s: _split_stats(d, arrays[s], f"{s}.npy", nbytes[s]) for s, d in split_docs.items()
        }
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
            "tokens": {s: stats[s]["tokens"] for s in SPLITS},
            "documents": {s: stats[s]["documents"] for s in SPLITS},
            "text_bytes": {s: stats[s]["text_bytes"] for s in SPLITS},
            "bytes_per_token": {s: stats[s]["bytes_per_token"] for s in SPLITS},
        }
        tmp = new_tmp_dir(shard_dir)
        try:
            for s in SPLITS:
                with atomic_open(tmp / f"{s}.npy") as f:
                    np.save(f, arrays[s])
                if s in masks:
                    with atomic_open(tmp / f"{s}.mask.npy") as f:
                        np.save(f, masks[s])
            atomic_write_json(tmp / MANIFEST, manifest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        publish_dir(tmp, shard_dir, replace=force or shard_dir.exists())
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
        if split in docs and not docs[split] and folder:
            logger.warning(
                "the %s split is empty: the mlx-lm data folder %s has no %s with records",
                SPLIT_NAMES[split],
                inputs if isinstance(inputs, str | os.PathLike) else inputs[0],
                FOLDER_FILES[split],
            )
        elif split in docs and not docs[split]:
            n = sum(docs.values())
            option = f"--{split}-fraction"
            fix = f"raise {option}" if n > 2 and frac > 0 else "add text"
            logger.warning(
                "the %s split is empty (%d document(s), %s %s): documents are separated by "
                "blank lines and each split needs distinct ones; %s or blank lines between "
                "documents",
                SPLIT_NAMES[split],
                n,
                option.lstrip("-").replace("-", " "),
                frac,
                fix,
            )
    timings["total"] = time.perf_counter() - t_start
    bundle.timings = timings
    bundle.built = built
    return bundle
