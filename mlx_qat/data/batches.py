"""Batches of token windows: a seeded, resumable training stream and a fixed evaluation set.

A batch is an ``mx.array`` of int32 with shape ``(batch_size, seq_len + 1)``: inputs are
``batch[:, :-1]`` and targets ``batch[:, 1:]``.

Training (:class:`TokenBatches`): the token array is cut into ``n`` non-overlapping windows of
``seq_len + 1`` tokens (consecutive windows share one boundary token, so every token is a
target once per epoch). Each epoch ``e`` draws, from ``numpy.random.default_rng([seed, e])``,
a start offset (so window boundaries move between epochs) and a permutation of the windows.
Global window ``g = step * batch_size + i`` is window ``perm_e[g % n]`` of epoch ``g // n``, so
``batch(step)`` is a pure function of ``(tokens, batch_size, seq_len, seed, step)``: a resumed
run only needs the step number, and any step is reached in O(1) (plus one O(n) permutation).

With a loss ``mask`` (`DataBundle.loss_mask`, `--mask-prompt`), a training batch is the pair
``(tokens, weights)``: ``weights`` float32 ``(batch_size, seq_len)``, the mask of the targets.
"""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx
import numpy as np


class _Windows:
    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int):
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size} and {seq_len}")
        if np.ndim(tokens) != 1:
            raise ValueError(f"tokens must be a 1-D array, got shape {np.shape(tokens)}")
        if len(tokens) < seq_len + 1:
            raise ValueError(
                f"{len(tokens)} tokens are too few for one window of seq_len + 1 = {seq_len + 1}; "
                "use a shorter seq_len or more text"
            )
        self.tokens, self.batch_size, self.seq_len = tokens, int(batch_size), int(seq_len)


def _gather(tokens: np.ndarray, starts: np.ndarray, length: int) -> mx.array:
    index = starts[:, None] + np.arange(length, dtype=np.int64)[None, :]
    return mx.array(np.asarray(tokens[index], dtype=np.int32))


class TokenBatches(_Windows):
    """Random contiguous windows of ``seq_len + 1`` tokens, a pure function of (seed, step);
    ``state(step)`` / ``from_state`` round-trip the only state there is."""

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int = 0, mask=None):
        super().__init__(tokens, batch_size, seq_len)
        if mask is not None and np.shape(mask) != np.shape(tokens):
            raise ValueError(f"mask shape {np.shape(mask)} is not the tokens' {np.shape(tokens)}")
        self.mask = mask
        self.seed = int(seed)
        full = (len(tokens) - 1) // seq_len
        # Keep one window of slack for the per-epoch offset when there is more than one window.
        self.windows_per_epoch = full - 1 if full >= 2 else full
        self._slack = len(tokens) - 1 - self.windows_per_epoch * seq_len
        self._orders: dict[int, tuple[int, np.ndarray]] = {}

    def _order(self, epoch: int) -> tuple[int, np.ndarray]:
        if epoch not in self._orders:
            rng = np.random.default_rng([self.seed, epoch])
            offset = int(rng.integers(0, self._slack + 1))
            perm = rng.permutation(self.windows_per_epoch)
            if len(self._orders) >= 4:
                self._orders.pop(next(iter(self._orders)))
            self._orders[epoch] = (offset, perm)
        return self._orders[epoch]

    def starts(self, step: int) -> np.ndarray:
        """Token offsets of the windows in batch ``step`` (int64, shape ``(batch_size,)``)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        g = step * self.batch_size + np.arange(self.batch_size, dtype=np.int64)
        epochs, index = np.divmod(g, self.windows_per_epoch)
        out = np.empty(self.batch_size, dtype=np.int64)
        for e in np.unique(epochs):
            offset, perm = self._order(int(e))
            sel = epochs == e
            out[sel] = offset + perm[index[sel]] * self.seq_len
        return out

    def batch(self, step: int) -> mx.array | tuple[mx.array, mx.array]:
        """The batch for ``step``: int32 ``(batch_size, seq_len + 1)``; with a ``mask``, the
        pair (that batch, float32 ``(batch_size, seq_len)`` weights of its targets)."""
        starts = self.starts(step)
        tokens = _gather(self.tokens, starts, self.seq_len + 1)
        if self.mask is None:
            return tokens
        return tokens, _gather(self.mask, starts + 1, self.seq_len).astype(mx.float32)

    def epoch(self, step: int) -> int:
        """The epoch the first window of batch ``step`` belongs to."""
        return (step * self.batch_size) // self.windows_per_epoch

    def epochs_at(self, step: int) -> float:
        """Epochs consumed by steps ``0 .. step-1``: target tokens seen / tokens in the split."""
        return step * self.batch_size * self.seq_len / len(self.tokens)

    def state(self, step: int) -> dict:
        """Everything needed to resume at ``step`` (besides the tokens)."""
        return {
            "step": int(step),
            "seed": self.seed,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
        }


class EvalBatches(_Windows, Sequence):
    """Fixed evaluation batches: the windows at ``k * seq_len`` (every token a target once), in
    order; the last batch may be short. ``num_tokens``: target tokens over all batches."""

    def __init__(
        self, tokens: np.ndarray, batch_size: int, seq_len: int, max_batches: int | None = None
    ):
        super().__init__(tokens, batch_size, seq_len)
        windows = (len(tokens) - 1) // seq_len
        if max_batches is not None:
            if max_batches < 1:
                raise ValueError(f"max_batches must be >= 1, got {max_batches}")
            windows = min(windows, max_batches * self.batch_size)
        self.num_windows = windows
        self.num_tokens = windows * self.seq_len

    def __len__(self) -> int:
        return -(-self.num_windows // self.batch_size)

    def __getitem__(self, i: int) -> mx.array:  # type: ignore[override]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        first = i * self.batch_size
        count = min(self.batch_size, self.num_windows - first)
        starts = (first + np.arange(count, dtype=np.int64)) * self.seq_len
        return _gather(self.tokens, starts, self.seq_len + 1)


def eval_batches(
    tokens: np.ndarray, batch_size: int, seq_len: int, max_batches: int | None = None
) -> EvalBatches:
    """Deterministic evaluation batches over ``tokens`` (see :class:`EvalBatches`)."""
    return EvalBatches(tokens, batch_size, seq_len, max_batches)
