"""Batch iterators: shapes, determinism across a simulated resume, epoch coverage, eval set."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlx_qat.data import TokenBatches, eval_batches


@pytest.fixture
def tokens():
    # Distinct values make every window identifiable by its first token.
    return np.arange(10_000, dtype=np.uint32)


def test_batch_shape_dtype_and_contiguity(tokens):
    it = TokenBatches(tokens, batch_size=4, seq_len=16, seed=0)
    b = it.batch(0)
    assert isinstance(b, mx.array) and b.dtype == mx.int32 and b.shape == (4, 17)
    x = np.array(b)
    assert (np.diff(x, axis=1) == 1).all()  # contiguous windows
    inputs, targets = b[:, :-1], b[:, 1:]
    assert inputs.shape == targets.shape == (4, 16)


def test_batches_are_a_pure_function_of_seed_and_step(tokens):
    run = TokenBatches(tokens, batch_size=8, seq_len=32, seed=3)
    seen = [np.array(run.batch(s)) for s in range(100)]
    # Simulated resume at step 57: a brand-new iterator sees exactly the same batches.
    state = run.state(57)
    resumed = TokenBatches(tokens, state["batch_size"], state["seq_len"], state["seed"])
    assert state["step"] == 57
    for s in range(state["step"], 100):
        np.testing.assert_array_equal(np.array(resumed.batch(s)), seen[s])
    # Out-of-order access changes nothing; another seed gives other batches.
    np.testing.assert_array_equal(np.array(TokenBatches(tokens, 8, 32, seed=3).batch(99)), seen[99])
    assert not np.array_equal(np.array(TokenBatches(tokens, 8, 32, seed=4).batch(0)), seen[0])


def test_each_epoch_covers_the_windows_once_and_epochs_are_reported(tokens):
    it = TokenBatches(tokens, batch_size=8, seq_len=50, seed=0)
    n = it.windows_per_epoch
    assert n == (len(tokens) - 1) // 50 - 1
    starts = np.concatenate([it.starts(s) for s in range(3 * n // 8 + 1)])
    for e in range(3):
        epoch = starts[e * n : (e + 1) * n]
        assert len(np.unique(epoch)) == n  # a permutation of non-overlapping windows
        assert (np.diff(np.sort(epoch)) == 50).all()
        assert epoch.min() >= 0 and epoch.max() + 51 <= len(tokens)
    assert not np.array_equal(starts[:n], starts[n : 2 * n])  # reshuffled each epoch
    assert it.epochs_at(0) == 0
    assert it.epochs_at(25) == pytest.approx(25 * 8 * 50 / len(tokens))
    assert it.epoch(0) == 0 and it.epoch(n // 8 + 1) == 1
    assert it.epochs_at(10 * n) > 70  # token budget beyond the corpus: many epochs, still valid
    assert it.batch(10 * n).shape == (8, 51)


def test_memmap_tokens_work(tmp_path):
    np.save(tmp_path / "t.npy", np.arange(5000, dtype=np.uint16))
    mm = np.load(tmp_path / "t.npy", mmap_mode="r")
    b = TokenBatches(mm, 2, 64, seed=1).batch(5)
    assert b.shape == (2, 65) and b.dtype == mx.int32


def test_eval_batches_are_fixed_and_cover_the_split(tokens):
    ev = eval_batches(tokens, batch_size=16, seq_len=100)
    windows = (len(tokens) - 1) // 100
    assert len(ev) == -(-windows // 16) and ev.num_tokens == windows * 100
    first = [np.array(b) for b in ev]
    second = [np.array(b) for b in ev]
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    flat = np.concatenate([b[:, :-1].reshape(-1) for b in first])
    np.testing.assert_array_equal(flat, tokens[: windows * 100])  # every target once, in order
    assert first[-1].shape == (windows - 16 * (len(ev) - 1), 101)
    capped = eval_batches(tokens, 16, 100, max_batches=2)
    assert len(capped) == 2 and np.array_equal(np.array(capped[1]), first[1])


def test_bad_arguments_are_clear(tokens):
    with pytest.raises(ValueError, match="too few"):
        TokenBatches(tokens[:10], 2, 16)
    with pytest.raises(ValueError, match="batch_size"):
        TokenBatches(tokens, 0, 16)
    with pytest.raises(ValueError, match="step"):
        TokenBatches(tokens, 2, 16).batch(-1)
    one_window = TokenBatches(tokens[:17], 3, 16)
    assert one_window.windows_per_epoch == 1 and one_window.batch(7).shape == (3, 17)
