"""The trainer's and the evaluator's view of the data pipeline: open prepared data (reading
only) or build raw text into a run's own `data/` dir (never repointing an existing
`latest.json`), and name a wrong tokenizer, a missing or too-small split, or a missing prompt
mask with the fix before any batch is cut. With `--model DIR`, the model's own tokenizer
encodes raw text and prepared data of another tokenizer is refused; a model directory without
tokenizer files cannot be checked (the run says so and uses the data's tokenizer).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from ..fileio import building_dir
from .batches import eval_batches
from .bundle import LATEST, MANIFEST, SPLIT_NAMES, load_bundle
from .hf import save_hf_tokenizer
from .shards import prepare_data
from .tokenizer_dir import has_tokenizer, load_tokenizer, tokenizer_kind, tokenizer_sha256

logger = logging.getLogger(__name__)


def is_prepared(path: str | os.PathLike) -> bool:
    """True for an `mlx_qat.data` output dir (latest.json) or a shards dir (manifest.json)."""
    p = Path(path)
    return p.is_dir() and ((p / LATEST).is_file() or (p / MANIFEST).is_file())


def model_tokenizer(model: str | os.PathLike | None, warn: bool = True) -> Path | None:
    """The `--model` directory when it holds its own tokenizer, else None (with `warn`, a
    warning that the data's tokenizer cannot be checked against the model's)."""
    if not model:
        return None
    if has_tokenizer(model):
        return Path(model)
    if warn:
        logger.warning(
            "--model %s has no tokenizer files: cannot check that the data is encoded with the "
            "model's own tokenizer (the run uses, and convert ships, the data's); copy the "
            "model's tokenizer files into it to have them used and checked",
            model,
        )
    return None


def _describe(bundle) -> str:
    tok = bundle.manifest["tokenizer"]
    kind = tok.get("kind", "sentencepiece")
    where = tok.get("source") or os.path.normpath(bundle.tokenizer_dir)
    return f"the {kind} tokenizer {where} (sha256 {tok['sha256'][:16]}, vocab {bundle.vocab_size})"


def check_model_tokenizer(bundle, model: str | os.PathLike | None) -> None:
    """ValueError naming both tokenizers and the fix unless `bundle` was encoded with the
    `--model` directory's own tokenizer, when it has one."""
    own = model_tokenizer(model)
    if own is None:
        return
    want, have = tokenizer_sha256(own), bundle.manifest["tokenizer"]["sha256"]
    if want == have:
        return
    try:
        vocab = load_tokenizer(own).vocab_size
    except ValueError:  # mlx-lm cannot load it: the mismatch is still the message
        vocab = "?"
    raise ValueError(
        f"--data {bundle.path}: encoded with {_describe(bundle)}, but --model {model} has its "
        f"own {tokenizer_kind(own)} tokenizer (sha256 {want[:16]}, vocab {vocab}): the model "
        "would learn from another tokenizer's ids. Prepare the data with the model's tokenizer "
        f"(mlx_qat.data --tokenizer {model} --input TEXT --out DIR, then --data DIR), or pass "
        "the text files as --data (or no --data): the trainer tokenizes them with the model's "
        "tokenizer"
    )


def run_vocab_size(bundle, vocab_size: int, model: str | os.PathLike | None) -> int:
    """The vocabulary of the run's data: `bundle`'s, else the `--model`'s own tokenizer's, else
    `vocab_size` (a tokenizer trained here)."""
    if bundle is not None:
        return bundle.vocab_size
    own = model_tokenizer(model, warn=False)
    return load_tokenizer(own).vocab_size if own is not None else vocab_size


def open_prepared(data: list[str] | None, model: str | os.PathLike | None = None):
    """The `DataBundle` of `data` when it is one prepared dir (`check_model_tokenizer`), else
    None (raw inputs, or the default corpus); FileNotFoundError naming missing raw inputs."""
    if data and len(data) == 1 and is_prepared(data[0]):
        bundle = load_bundle(data[0])
        check_model_tokenizer(bundle, model)
        return bundle
    missing = [d for d in data or [] if not Path(d).exists()]
    if missing:
        raise FileNotFoundError(
            f"--data {' '.join(missing)}: no such file or directory; give a prepared data "
            "dir (python -m mlx_qat data --out DIR) or text files/folders"
        )
    return None


def prepare_run_data(
    data: list[str] | None, out: str | os.PathLike, vocab_size: int, seed: int, model=None
):
    """Tokenize raw `data` (None: the default corpus) into `out` with the `model`'s own
    tokenizer, else a `vocab_size`-piece one trained here (ValueError if it came out another
    size). `latest.json` is written only when `out` has none."""
    own = model_tokenizer(model)
    how = f"the tokenizer of {own}" if own else f"a {vocab_size}-piece tokenizer trained on it"
    logger.info("preparing data from %s into %s with %s", data or "the default corpus", out, how)
    bundle = prepare_data(
        data or None, out, vocab_size=vocab_size, seed=seed, tokenizer=own, keep_latest=True
    )
    if own is None and bundle.vocab_size != vocab_size:  # sentencepiece makes it exact
        raise ValueError(
            f"data {bundle.path}: its tokenizer has {bundle.vocab_size} pieces, not "
            f"--vocab-size {vocab_size}; prepare it with mlx_qat.data and pass --data DIR"
        )
    return bundle


def check_split(bundle, split: str, seq_len: int) -> None:
    """ValueError naming the data, the split and the fix when `split` is missing or holds
    fewer than `seq_len + 1` tokens (one window)."""
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


def train_loss_mask(bundle, mask_prompt: bool):
    """The training split's loss mask for `--mask-prompt` (None without it); ValueError naming
    the fix when the data has no prompts to mask."""
    if not mask_prompt:
        return None
    mask = bundle.loss_mask("train")
    if mask is None:
        raise ValueError(
            f"--mask-prompt: data {bundle.path} has no prompts to mask (text only, or "
            "prepared before prompt masks); prepare mlx-lm completions/chat JSONL with the "
            "model's tokenizer (mlx_qat.data --input DIR --tokenizer MODEL_DIR), or drop "
            "--mask-prompt"
        )
    return mask


def copy_tokenizer(bundle, run_dir: str | os.PathLike) -> Path:
    """`run_dir/tokenizer/`: a copy of `bundle`'s tokenizer (a sentencepiece one with its HF
    files), built aside and renamed; an existing one is kept only when its hash is the
    bundle's (one left by another attempt is replaced)."""
    dest = Path(run_dir) / "tokenizer"
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
    with building_dir(dest, replace=True) as tmp:
        shutil.copytree(bundle.tokenizer_dir, tmp, dirs_exist_ok=True)
        if tokenizer_kind(bundle.tokenizer_dir) == "sentencepiece":
            save_hf_tokenizer(bundle.tokenizer_dir, tmp)
    return dest


def open_eval_data(
    data, batch_size: int, seq_len: int, max_batches: int | None, split: str = "val"
):
    """(bundle, fixed batches, bytes per token) of split `split` ("val" or "test") of
    prepared `data`; ValueError naming the fix."""
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
    batches = eval_batches(bundle.split(split), batch_size, seq_len, max_batches)
    return bundle, batches, float(bundle.bytes_per_token[split])
