"""Tests run on MLX's default device (the GPU on a Mac, where they train through the fused
kernels). A test marked `cpu_only` asserts something true of MLX's CPU backend only, e.g. of
the CPU fast path; it is skipped when the default device is a GPU.

Session fixtures shared by several test files live here, so that each is built once per run
(a fixture imported into a test module is built once per module): the convert tests' prepared
data and trained runs (`tiny_data`, `runs`: see test_convert_fixtures.py), and a tiny model
directory with its own Hugging Face tokenizer (`hf_model`)."""

from __future__ import annotations

import mlx.core as mx
import pytest
from test_convert_fixtures import runs, tiny_data  # noqa: F401


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("cpu_only") is not None and mx.default_device() != mx.cpu:
        pytest.skip(f"cpu_only: the default device is {mx.default_device()}")


@pytest.fixture(scope="session")
def hf_model(tmp_path_factory):
    """A float mlx-lm model dir (d2 preset, random weights) with its own Hugging Face tokenizer
    (byte-level BPE, 512 ids, BOS added by encode, chat template): read it, never change it
    (copy it first)."""
    from tiny_models import float_model_dir, hf_tokenizer_dir

    root = tmp_path_factory.mktemp("hf_model")
    tok = hf_tokenizer_dir(root / "tokenizer", vocab=512)
    return float_model_dir(root / "model", vocab=512, tokenizer=tok)[0]
