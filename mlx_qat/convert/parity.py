"""The train = deploy check: validation loss before and after export, on the same batches.

`reference` is the model as trained (fake quantization on, float32 or its training dtype);
`exported` is the staged directory loaded back by mlx-lm's own model loader (`load_staged`:
`mlx_lm.utils.load_model`, which `mlx_lm.load` calls, reading the config from
`config.unverified.json`: `config.json` is written only after this check passes). Both are mean token
cross-entropies (nats) over the same deterministic validation batches, logits in float32.
The check passes when |exported − reference| / |reference| ≤ tolerance.

Default tolerances by output dtype (`DEFAULT_TOLERANCE`): float32 1e-4 (DESIGN.md invariant 2;
measured 3e-8 to 1e-7, float32 summation noise). float16/bfloat16 exports run every matmul,
norm and activation in half precision while the reference runs in float32, so the loss moves by
that rounding alone: measured up to 8e-5 (float16) and 6e-4 (bfloat16) over seven quantizers
and formats (`benchmarks/results/convert.md`). The bounds, 1e-3 and 5e-3, leave about ten
times that margin. For scale: on the benchmark's trained 1M-parameter model, one layer's scales
off by 1% move the loss by 2.5e-5, by 10% by 2.3e-3, by 50% by 3.7e-2; float32 exports are
therefore the sharp check, half-precision ones catch gross errors only.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .errors import ConvertError

logger = logging.getLogger(__name__)

DEFAULT_TOLERANCE = {"float32": 1e-4, "float16": 1e-3, "bfloat16": 5e-3}
PROGRESS_SECONDS = 5.0  # at most one progress line per evaluation this often


def default_tolerance(dtype: mx.Dtype) -> float:
    """The relative loss tolerance for an export saved in `dtype`."""
    return DEFAULT_TOLERANCE.get(str(dtype).rsplit(".", 1)[-1], DEFAULT_TOLERANCE["bfloat16"])


@dataclass
class ParityReport:
    """Losses (nats/token) on the same batches of `reference` (the model before export: fake
    quant on for QAT/PTQ, the source model for a dequantize), `exported` (the written directory
    loaded by mlx-lm), `fp` (fake quant off) and `ptq` (round-to-nearest at the same format);
    `bits_per_byte` of the exported loss when the data knows its bytes per token."""

    reference: float
    exported: float
    tolerance: float
    num_batches: int
    num_tokens: int
    data: str
    fp: float | None = None
    ptq: float | None = None
    bits_per_byte: float | None = None

    @property
    def rel_diff(self) -> float:
        return abs(self.exported - self.reference) / max(abs(self.reference), 1e-12)

    @property
    def passed(self) -> bool:
        """Both losses finite and within the tolerance (a NaN loss never passes)."""
        finite = math.isfinite(self.reference) and math.isfinite(self.exported)
        return finite and self.rel_diff <= self.tolerance

    def to_dict(self) -> dict:
        return {**asdict(self), "rel_diff": self.rel_diff, "passed": self.passed}


@dataclass
class ParityData:
    """Validation batches plus where they came from (`path`: as given)."""

    batches: list[mx.array]
    description: str
    bytes_per_token: float | None = None
    path: Path | None = None

    @property
    def num_tokens(self) -> int:
        return sum(int(b[:, 1:].size) for b in self.batches)


def val_loss(model: nn.Module, batches: Iterable[mx.array], what: str | None = None) -> float:
    """Mean next-token cross-entropy (nats) over all target tokens of `batches`, by the
    trainer's own evaluation. With `what` (e.g. "the QAT model before export"), progress is
    logged at INFO (a 135M model's parity evaluations take minutes on a CPU).
    """
    from ..eval_modes import evaluate

    t0 = time.perf_counter()
    if what is not None:
        batches = _logged(batches, what, t0)
    try:
        loss = evaluate(model, batches, 1.0).loss
    except ValueError as e:
        raise ConvertError(f"parity check: {e}") from e
    if what is not None:
        logger.info("parity: %s: loss %.6f (%.1f s)", what, loss, time.perf_counter() - t0)
    return loss


def _logged(batches, what: str, t0: float) -> Iterator[mx.array]:
    # The evaluation asks for batch i + 1 once batch i is computed.
    batches = list(batches)
    n, last = len(batches), t0
    tokens = sum(int(b[:, 1:].size) for b in batches)
    logger.info("parity: %s, %d batch(es) of %d tokens ...", what, n, tokens)
    for i, batch in enumerate(batches):
        now = time.perf_counter()
        if i and now - last >= PROGRESS_SECONDS:
            logger.info("parity: %s, batch %d/%d (%.0f s)", what, i, n, now - t0)
            last = now
        yield batch


def _tokens_from(path: Path, tokenizer_dir: Path | None) -> tuple[np.ndarray, str, float | None]:
    """Validation token ids from a data dir, a .npy file (1-D, non-negative integers; the
    model's range is checked later) or text files (tokenized)."""
    from ..data import load_bundle, read_documents

    if path.is_dir() and ((path / "manifest.json").is_file() or (path / "latest.json").is_file()):
        try:
            bundle = load_bundle(path)
        except (FileNotFoundError, ValueError, KeyError) as e:
            raise ConvertError(f"parity data {path}: {e}") from e
        bpt = bundle.manifest.get("bytes_per_token", {}).get("val")
        return np.asarray(bundle.val), f"{bundle.path} (val split)", bpt
    if path.suffix == ".npy":
        try:
            ids = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ConvertError(f"parity data {path}: cannot read it as a .npy array ({e})") from e
        _check_ids(ids, path)
        return ids, str(path), None
    if tokenizer_dir is None:
        raise ConvertError(f"parity data {path}: text needs a tokenizer, and none was found")
    from ..data import encode_documents, load_tokenizer

    try:
        docs = read_documents(path)
        # as the run's shards were encoded: EOS after each document (and BOS first where a
        # model's own tokenizer adds it)
        ids = encode_documents(load_tokenizer(tokenizer_dir), docs)
    except (FileNotFoundError, ValueError) as e:
        raise ConvertError(f"parity data {path}: {e}") from e
    text_bytes = sum(len(d.encode("utf-8")) for d in docs)
    return ids, f"{path} (tokenized)", text_bytes / max(len(ids), 1)


def _check_ids(ids: np.ndarray, path: Path) -> None:
    fix = "save the token ids as a 1-D integer array (np.save(path, np.asarray(ids, np.int32)))"
    if ids.dtype == np.bool_ or not np.issubdtype(ids.dtype, np.integer):
        raise ConvertError(
            f"parity data {path}: holds {ids.dtype} values, not token ids (integers); {fix}"
        )
    if ids.ndim != 1:
        raise ConvertError(f"parity data {path}: has shape {ids.shape}, not 1-D; {fix}")
    if ids.size and int(np.min(ids)) < 0:
        raise ConvertError(
            f"parity data {path}: negative token id {int(np.min(ids))}; token ids are >= 0; {fix}"
        )


def load_parity_data(
    path: Path,
    *,
    seq_len: int,
    batch_size: int,
    max_batches: int | None,
    vocab_size: int,
    tokenizer_dir: Path | None = None,
) -> ParityData:
    """Deterministic validation batches (the trainer's `eval_batches`) from `path`."""
    from ..data import eval_batches

    tokens, desc, bpt = _tokens_from(Path(path), tokenizer_dir)
    if len(tokens) < 2:
        raise ConvertError(f"parity data {path}: fewer than 2 tokens")
    top = int(np.max(tokens))
    if top >= vocab_size:
        raise ConvertError(
            f"parity data {path}: token id {top} >= the model's vocab_size {vocab_size}; it was "
            "encoded with another tokenizer. Pass the run's own data with --parity-data"
        )
    seq_len = min(seq_len, len(tokens) - 1)  # a short file still gives one window
    try:
        batches = list(eval_batches(tokens, batch_size, seq_len, max_batches))
    except ValueError as e:
        raise ConvertError(f"parity data {path}: {e}") from e
    return ParityData(batches, desc, bpt, Path(path))


def load_staged(path: Path) -> nn.Module:
    """The staged model, built by mlx-lm's own loader from its weights and pending config
    (`config.unverified.json`, see the module docstring); all else is mlx-lm's."""
    from ..mlxlm_compat import load_model_with_config
    from .write import PENDING_CONFIG

    def pending_config(model_path: Path) -> dict:
        with open(model_path / PENDING_CONFIG, encoding="utf-8") as f:
            return json.load(f)

    return load_model_with_config(path, pending_config)


def check_parity(path: Path, data: ParityData, losses: dict, tolerance: float) -> ParityReport:
    """Compare the staged export's validation loss with the reference `losses["ref"]`."""
    exported = val_loss(load_staged(path), data.batches, "the exported directory (mlx-lm)")
    bpb = None
    if data.bytes_per_token:
        bpb = exported / math.log(2) / data.bytes_per_token
    return ParityReport(
        reference=losses["ref"],
        exported=exported,
        tolerance=tolerance,
        num_batches=len(data.batches),
        num_tokens=data.num_tokens,
        data=data.description,
        fp=losses.get("fp"),
        ptq=losses.get("ptq"),
        bits_per_byte=bpb,
    )


def parity_message(report: ParityReport, mlx_path: Path) -> str:
    if not math.isfinite(report.exported):
        return (
            f"parity check failed for {mlx_path}: validation loss {report.exported} after export "
            f"vs {report.reference:.6f} before: the exported model computes NaN/inf; nothing "
            "was written. Try --dtype float32 (a half-precision forward can overflow)"
        )
    return (
        f"parity check failed for {mlx_path}: validation loss {report.exported:.6f} after export "
        f"vs {report.reference:.6f} before (relative difference {report.rel_diff:.2e} > "
        f"tolerance {report.tolerance:.0e}); nothing was written. If the difference is expected "
        "(e.g. a half-precision --dtype), raise --parity-tolerance or pass --no-parity-check"
    )
