"""mlx-lm's fine-tuning data: JSONL records of three formats, tokenized by mlx-lm's own classes.
The formats (`mlx_lm.tuner.datasets`, told apart by a record's keys, in this order):
``completions`` ``{"prompt": ..., "completion": ...}`` and ``chat`` ``{"messages": [...]}``
(optionally ``"tools"``), both rendered with the tokenizer's chat template; ``text``
``{"text": ...}``, ``tokenizer.encode(text)``.
`encode_units` takes the ids from `create_dataset(...).process(record)`, so they are mlx-lm's
by construction, with EOS after each record unless it already ends so (as shards separate
documents). Its uint8 loss mask is 0 on the prompt of a completions/chat record (what mlx-lm's
``--mask-prompt`` masks: the ids before mlx-lm's offset), 1 elsewhere.
An mlx-lm data folder (``train.jsonl``, optional ``valid.jsonl`` and ``test.jsonl``: what
``mlx_lm.lora --data DIR`` reads) gives the splits as they are (`mlx_lm_folder`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np

FORMATS = ("completions", "chat", "text")
# mlx_lm.lora's file of each split (`mlx_lm.tuner.datasets.load_local_dataset`).
FOLDER_FILES = {"train": "train.jsonl", "val": "valid.jsonl", "test": "test.jsonl"}
RECORDS_VERSION = 1  # bump when the reading or the encoding of records changes

Unit = str | dict  # a text document, or an mlx-lm record


def record_format(record, where: str = "record") -> str:
    """The mlx-lm format of `record`; ValueError naming `where` and the accepted shapes."""
    if isinstance(record, dict):
        if "prompt" in record and "completion" in record:
            return "completions"
        if "messages" in record:
            return "chat"
        if isinstance(record.get("text"), str):
            return "text"
    raise ValueError(
        f'{where}: not an mlx-lm record; expected {{"text": ...}}, {{"prompt": ..., '
        '"completion": ...}} or {"messages": [...]} (one JSON object per line)'
    )


def mlx_lm_folder(inputs) -> dict[str, Path] | None:
    """{split: file} of an mlx-lm data folder (one folder holding ``train.jsonl``; missing
    splits left out); None for any other input."""
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    if inputs is None or len(inputs) != 1:
        return None
    folder = Path(inputs[0]).expanduser()
    if not (folder / FOLDER_FILES["train"]).is_file():
        return None
    return {s: folder / f for s, f in FOLDER_FILES.items() if (folder / f).is_file()}


def unit_key(unit: Unit) -> str:
    """What the train/validation/test split hashes: a document's text; a record's canonical
    JSON (a text record: its text)."""
    if isinstance(unit, str):
        return unit
    if record_format(unit) == "text":
        return unit["text"]
    return json.dumps(unit, sort_keys=True, ensure_ascii=False)


def uses_records(units: Sequence[Unit]) -> bool:
    """True when some unit is a completions/chat record (the data then has a prompt mask)."""
    return any(isinstance(u, dict) and record_format(u) != "text" for u in units)


def encode_units(tok, units: Sequence[Unit], dtype, num_threads: int | None = None):
    """(ids in `dtype`, uint8 loss mask, text bytes) of `units` in order, EOS after each. Text
    documents are encoded as `shards.encode_documents` does; records need an `HFTokenizer` and,
    for completions/chat, a chat template (ValueError naming the fix)."""
    from .tokenizer import default_threads

    per_unit: list[tuple[list[int] | np.ndarray, int]] = [([], 0)] * len(units)
    text_bytes = 0
    texts = [i for i, u in enumerate(units) if isinstance(u, str)]
    if texts:  # as `shards.encode_documents`: encode, then EOS unless it already ends so
        threads = num_threads or default_threads()
        for i, ids in zip(texts, tok.encode_batch([units[i] for i in texts], threads)):
            ids = list(ids)
            per_unit[i] = (ids if ids and ids[-1] == tok.eos_id else ids + [tok.eos_id], 0)
            text_bytes += len(units[i].encode("utf-8"))
    records = [i for i, u in enumerate(units) if isinstance(u, dict)]
    if records:
        from mlx_lm.tuner.datasets import create_dataset

        wrapper = getattr(tok, "wrapper", None)
        if wrapper is None:
            raise ValueError(
                "mlx-lm JSONL records are tokenized with a model's own tokenizer: pass "
                "--tokenizer MODEL_DIR (mlx_qat.data) or --model MODEL_DIR (mlx_qat.train)"
            )
        for fmt in FORMATS:
            group = [i for i in records if record_format(units[i]) == fmt]
            if not group:
                continue
            if fmt != "text" and not getattr(tok.hf, "chat_template", None):
                raise ValueError(
                    f"{fmt} records are rendered with the tokenizer's chat template, and "
                    f"{tok.dir} has none; use an instruct model's tokenizer (one with a "
                    "chat_template) or text records"
                )
            args = SimpleNamespace(mask_prompt=fmt != "text")
            ds = create_dataset([units[i] for i in group], wrapper, args)
            for k, i in enumerate(group):
                ids, offset = ds.process(ds[k])
                ids = list(ids)
                text_bytes += len(tok.decode(ids).encode("utf-8"))
                if not ids or ids[-1] != tok.eos_id:
                    ids.append(tok.eos_id)
                per_unit[i] = (ids, min(int(offset), len(ids)))
    lens = [len(ids) for ids, _ in per_unit]
    out = np.zeros(sum(lens), dtype)
    mask = np.ones(sum(lens), np.uint8)
    pos = 0
    for (ids, offset), n in zip(per_unit, lens):
        out[pos : pos + n] = ids
        mask[pos : pos + offset] = 0
        pos += n
    return out, mask, text_bytes
