"""The trainer's and the evaluator's view of the data pipeline.

* `open_prepared` opens prepared data (an `mlx_qat.data` output dir or a shards dir) without
  writing anything; `prepare_run_data` builds raw text (or the default corpus) into a run's own
  `data/` dir. A run never repoints a `latest.json` that exists: prepared data a user made does
  not change under them.
* Fine-tuning an existing model (`--model DIR`): the model's own tokenizer (`model_tokenizer`)
  encodes raw text, and prepared data made by another tokenizer is refused, naming both
  (`check_model_tokenizer`). A model directory without tokenizer files cannot be checked: the
  run says so and uses the data's tokenizer, as before.
* `copy_tokenizer` makes `<run>/tokenizer/` the tokenizer the run's data was encoded with,
  checked by hash (`tokenizer_sha256`): a stale one left by an earlier attempt is replaced.
* `check_split` names a missing, empty or too-small split and the fix, before any batch is cut.
* `train_loss_mask`: the training split's prompt mask for `--mask-prompt`, or the fix.
* `open_eval_data` opens the data `mlx_qat.eval` scores with (its validation or test split).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from .bundle import SPLIT_NAMES
from .tokenizer_dir import has_tokenizer, load_tokenizer, tokenizer_kind, tokenizer_sha256

logger = logging.getLogger(__name__)

TOKENIZER = "tokenizer"


def is_prepared(path: str | os.PathLike) -> bool:
    """True for an `mlx_qat.data` output dir (latest.json) or a shards dir (manifest.json)."""
    p = Path(path)
    return p.is_dir() and ((p / "latest.json").is_file() or (p / "manifest.json").is_file())


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
    """Raise ValueError, naming both tokenizers and the fix, unless `bundle` was encoded with
    the `--model` directory's own tokenizer (by `tokenizer_sha256`). Nothing to check without
    `model` or when it holds no tokenizer (`model_tokenizer` warns)."""
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
        f"own {tokenizer_kind(own)} tokenizer (sha256 {want[:16]}, vocab "
        f"{vocab}): the model would learn from another tokenizer's "
        f"ids. Prepare the data with the model's tokenizer (mlx_qat.data "
        f"--tokenizer {model} --input TEXT --out DIR, then --data DIR), or pass the text "
        "files as --data (or no --data): the trainer tokenizes them with the model's tokenizer"
    )


def run_vocab_size(bundle, vocab_size: int, model: str | os.PathLike | None) -> int:
    """The vocabulary of the run's data: the prepared `bundle`'s; else, for data the run
    prepares, the `--model`'s own tokenizer's, else `vocab_size` (a tokenizer trained here)."""
    if bundle is not None:
        return bundle.vocab_size
    own = model_tokenizer(model, warn=False)
    return load_tokenizer(own).vocab_size if own is not None else vocab_size


def open_prepared(data: list[str] | None, model: str | os.PathLike | None = None):
    """The `DataBundle` of `data` when it is one prepared dir, else None (raw inputs, or the
    default corpus, which `prepare_run_data` builds). Reads only. With `model` (`--model`),
    data of another tokenizer than the model's own is refused (`check_model_tokenizer`).

    Raises FileNotFoundError naming raw inputs that do not exist.
    """
    from .shards import load_bundle

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
    data: list[str] | None,
    out: str | os.PathLike,
    vocab_size: int,
    seed: int,
    model: str | os.PathLike | None = None,
):
    """Tokenize raw `data` (None: the default corpus) into `out` (by default `<run>/data`)
    with the `model`'s own tokenizer when it has one, else with a sentencepiece tokenizer of
    `vocab_size` pieces trained here (ValueError if it came out another size).

    The tokenizer and shards directories are content-addressed, so sharing `out` between runs
    only adds directories; `latest.json` is written only when `out` has none.
    """
    from .shards import prepare_data

    own = model_tokenizer(model)
    logger.info(
        "preparing data from %s into %s with %s",
        data or "the default corpus",
        out,
        f"the tokenizer of {own}" if own else f"a {vocab_size}-piece tokenizer trained on it",
    )
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
    """Raise ValueError naming the data, the split and the fix when `split` is missing (the
    test split of data prepared before there was one) or holds fewer than `seq_len + 1`
    tokens (one window)."""
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
    the data and the fix when the data has no prompts to mask (text only, or prepared before
    masks existed)."""
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
    """`run_dir/tokenizer/`: the tokenizer dir of `bundle` (a sentencepiece one gets its HF
    files; a model's own HF tokenizer is copied as it is), built aside, renamed. An existing
    one is kept only when its hash is the bundle's: a tokenizer left by another attempt is
    replaced (the caller has refused a resume with another tokenizer)."""
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
    if tokenizer_kind(bundle.tokenizer_dir) == "sentencepiece":
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
