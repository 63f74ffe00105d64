"""Prepared data, opened: `load_bundle` reads a shards directory (or a data directory's
``latest.json``) into a `DataBundle` of read-only memory-mapped token arrays (the writer is
`shards.prepare_data`). The manifest names each split's ``.npy`` file (and ``.mask.npy`` loss
mask, where the data has prompts) and the tokenizer's sha256, checked on opening.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .tokenizer import MODEL_FILE
from .tokenizer_dir import load_tokenizer, tokenizer_sha256

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LATEST = "latest.json"
SPLITS = ("train", "val", "test")
REQUIRED_SPLITS = ("train", "val")  # shards made before the test split have only these
SPLIT_NAMES = {"train": "training", "val": "validation", "test": "test"}


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


@dataclass
class DataBundle:
    """Everything the trainer needs: tokenizer directory, token arrays and their manifest.
    ``train``/``val``/``test``: read-only memory-mapped token ids (EOS after each document;
    ``test`` None for shards prepared before the test split existed). ``bytes_per_token``
    converts nats/token into bits per byte: ``bpb = loss / ln(2) / bytes_per_token``.
    ``timings`` (seconds) and ``built`` describe this call only.
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

    vocab_size = property(lambda self: int(self.manifest["vocab_size"]))
    eos_id = property(lambda self: int(self.manifest["eos_id"]), doc="Ends every document.")
    has_test = property(lambda self: self.test is not None)
    bytes_per_token = property(lambda self: dict(self.manifest["bytes_per_token"]))

    @property
    def bos_id(self) -> int | None:
        """BOS id, or None; in the shards only where a model's own tokenizer adds it."""
        bos = self.manifest.get("bos_id")
        return None if bos is None else int(bos)

    @property
    def identity(self) -> dict:
        """What names these tokens by content (results rows carry it), from the manifest: the
        shards' key (None for shards older than it) and the tokenizer's sha256."""
        tokenizer_sha256 = self.manifest["tokenizer"]["sha256"]
        return {"shards_key": self.manifest.get("key"), "tokenizer_sha256": tokenizer_sha256}

    def split(self, name: str) -> np.ndarray:
        """The token array of split ``name`` ("train", "val" or "test"); ValueError naming the
        fix for the test split of shards prepared before there was one."""
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
        """The uint8 loss mask of split ``name`` (0 on prompt tokens: `records.encode_units`),
        or None when the data has no prompts."""
        self.split(name)
        return self.masks.get(name)

    def tokenizer(self):
        """Load the tokenizer these shards were encoded with."""
        return load_tokenizer(self.tokenizer_dir)


def load_bundle(
    path: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None
) -> DataBundle:
    """Open prepared data: a shards directory, or a data directory (its ``latest.json``).
    ``tokenizer_dir`` defaults to the manifest's; ValueError naming both hashes when it is not
    the tokenizer the shards were encoded with."""
    path = Path(path)
    if not (path / MANIFEST).is_file() and (path / LATEST).is_file():
        path = path / json.loads((path / LATEST).read_text(encoding="utf-8"))["shards"]
    manifest_file = path / MANIFEST
    if not manifest_file.is_file():
        raise FileNotFoundError(
            f"no {MANIFEST} in {path}; prepare the data first with `python -m mlx_qat data`"
        )
    manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
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
    splits = manifest["splits"]
    missing = [s for s in REQUIRED_SPLITS if s not in splits]
    if missing:
        raise ValueError(
            f"{manifest_file}: lists no {' or '.join(missing)} split; rebuild the data with "
            "`python -m mlx_qat data --force`"
        )
    arrays = {s: np.load(path / splits[s]["file"], mmap_mode="r") for s in SPLITS if s in splits}
    masks = {  # shards without prompts have none: every token carries loss
        s: np.load(path / splits[s]["mask"], mmap_mode="r") for s in arrays if "mask" in splits[s]
    }
    if "test" not in arrays:
        logger.info("data %s: no test split (prepared before there was one)", path)
    return DataBundle(
        path, tok_dir, arrays["train"], arrays["val"], manifest, test=arrays.get("test"),
        masks=masks,
    )  # fmt: skip
