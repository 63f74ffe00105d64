"""Reading text corpora into documents, and the train/validation/test split by document.
Formats (by file name, case-insensitive):

* ``.txt``/``.txt.gz``: UTF-8 text (a leading BOM dropped, CRLF read as LF); documents are
  separated by blank lines (empty or spaces/tabs only). Inside a document, newlines and
  indentation are kept; leading blank lines and trailing whitespace are dropped.
* ``.jsonl``/``.jsonl.gz``: one JSON object with a string ``"text"`` per line, one document
  each (kept whole). With ``records=True`` (a model's own tokenizer), the records as mlx-lm
  reads them: text, completions or chat (`mlx_qat.data.records`).

A folder is searched recursively for those files (hidden files and other names ignored), in
sorted path order.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from .records import record_format

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".txt.gz")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES

PathLike = str | os.PathLike
Paths = PathLike | Iterable[PathLike]

# One or more blank lines (empty or spaces/tabs only) between two documents.
_BLANK_LINES = re.compile(r"\n(?:[^\S\n]*\n)+")
_LEADING_BLANK_LINES = re.compile(r"\A(?:[^\S\n]*\n)+")


def _as_list(paths: Paths) -> list[Path]:
    return [Path(paths)] if isinstance(paths, str | os.PathLike) else [Path(p) for p in paths]


def resolve_files(paths: Paths) -> list[Path]:
    """Expand files and folders into the list of readable files (folders recursively, sorted);
    FileNotFoundError naming a missing path, ValueError for a file of an unknown type or a
    folder without any readable file."""
    files: list[Path] = []
    for p in _as_list(paths):
        p = p.expanduser()
        if p.is_dir():
            found = sorted(
                f
                for f in p.rglob("*")
                if f.is_file()
                and f.name.lower().endswith(SUFFIXES)
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
            if not found:
                raise ValueError(
                    f"no .txt, .txt.gz or .jsonl files found in folder {p}; "
                    "pass files of those types or another folder"
                )
            files.extend(found)
        elif p.is_file():
            if not p.name.lower().endswith(SUFFIXES):
                raise ValueError(
                    f"cannot read {p}: unsupported file type (expected one of {', '.join(SUFFIXES)})"
                )
            files.append(p)
        else:
            raise FileNotFoundError(f"input path does not exist: {p}")
    if not files:
        raise ValueError("no input paths given; pass at least one file or folder")
    return files


def _read_text(path: Path) -> str:
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8-sig") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ValueError(
            f"cannot read {path}: not UTF-8 text ({e.reason} at byte {e.start}); "
            "convert it to UTF-8 first"
        ) from e
    except (OSError, EOFError) as e:
        raise OSError(f"cannot read {path}: {e}") from e


def split_text(text: str) -> list[str]:
    """Split text into documents at blank lines (see module docstring)."""
    chunks = (_LEADING_BLANK_LINES.sub("", c).rstrip() for c in _BLANK_LINES.split(text))
    return [c for c in chunks if c.strip()]


def _read_jsonl(path: Path, records: bool = False) -> list:
    docs: list = []
    for lineno, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg})") from e
        fmt = record_format(record, f"{path}:{lineno}")
        if records:  # read as mlx-lm reads it: the record itself, its text untouched
            if fmt != "text" or record["text"].strip():
                docs.append(record)
            continue
        if fmt != "text":
            raise ValueError(
                f"{path}:{lineno}: a {fmt} record is rendered with a model's chat template; "
                "pass the model's tokenizer (mlx_qat.data --tokenizer MODEL_DIR, or "
                "mlx_qat.train --model MODEL_DIR)"
            )
        text = record["text"].strip("\n").rstrip()
        if text.strip():
            docs.append(text)
    return docs


def read_file(path: PathLike, records: bool = False) -> list:
    """The documents of one file (with ``records``, a JSONL file's mlx-lm records)."""
    path = Path(path)
    if path.name.lower().endswith(JSONL_SUFFIXES):
        return _read_jsonl(path, records)
    return split_text(_read_text(path))


def read_documents(paths: Paths, records: bool = False) -> list:
    """The documents of files and/or folders, in sorted-file order (`read_file`); OSError for
    an unreadable file, ValueError when a file is not UTF-8 or no document at all was found."""
    docs: list[str] = []
    for f in resolve_files(paths):
        part = read_file(f, records)
        logger.debug("read %d documents from %s", len(part), f)
        docs.extend(part)
    if not docs:
        where = ", ".join(str(p) for p in _as_list(paths))
        raise ValueError(f"no documents found in {where}: the input files hold no text")
    return docs


def _doc_key(doc: str, seed: int) -> float:
    digest = hashlib.blake2b(doc.encode("utf-8"), digest_size=8, key=seed.to_bytes(8, "little"))
    return int.from_bytes(digest.digest(), "little") / 2.0**64


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {frac}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction {val_fraction} + test_fraction {test_fraction} must be < 1: the "
            "training split needs documents; lower one of them"
        )


def split_documents(
    docs: Sequence, val_fraction: float = 0.05, seed: int = 0, test_fraction: float = 0.05, key=None
) -> tuple[list, list, list]:
    """Split documents into (train, validation, test), deterministically and by document.

    A keyed hash of (seed, text) maps each document to k in [0, 1): validation when
    k < ``val_fraction``, test when ``val_fraction <= k < val_fraction + test_fraction``,
    training otherwise. So the split ignores document order, duplicates land together, and the
    validation split does not depend on ``test_fraction``. With few documents, a split that
    would be empty borrows the document nearest its boundary: training never is; validation
    is not when ``val_fraction > 0`` and there are two distinct documents; test is not when
    ``test_fraction > 0`` and there are enough for every split asked for. Each split keeps the
    input order. ``key`` maps a document to the text hashed (default: itself; mlx-lm records:
    `records.unit_key`).
    """
    check_fractions(val_fraction, test_fraction)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    keys = [key(d) for d in docs] if key else docs
    hashed = {k: _doc_key(k, seed) for k in keys}
    distinct = sorted(hashed, key=lambda k: (hashed[k], k))  # by key: val, then test, then train
    n = len(distinct)
    n_val = sum(hashed[k] < val_fraction for k in distinct)
    n_test = sum(val_fraction <= hashed[k] < val_fraction + test_fraction for k in distinct)
    n_train = n - n_val - n_test
    if n and not n_train:  # the highest-keyed document (and its duplicates) trains
        if n_test:
            n_test -= 1
        else:
            n_val -= 1
        n_train = 1
    if val_fraction > 0 and not n_val and n >= 2:  # the lowest-keyed one validates
        if n_test:
            n_test -= 1
        else:
            n_train -= 1
        n_val = 1
    if test_fraction > 0 and not n_test and n >= 2 + (val_fraction > 0):
        if n_train > 1:  # the lowest-keyed training document
            n_train -= 1
        else:  # else the highest-keyed validation document
            n_val -= 1
        n_test = 1
    val = set(distinct[:n_val])
    test = set(distinct[n_val : n_val + n_test])
    return (
        [d for d, k in zip(docs, keys) if k not in val and k not in test],
        [d for d, k in zip(docs, keys) if k in val],
        [d for d, k in zip(docs, keys) if k in test],
    )
