"""Tests run on MLX's default device (the GPU on a Mac, where they train through the fused
kernels). A test marked `cpu_only` asserts something true of MLX's CPU backend only, e.g. of
the CPU fast path; it is skipped when the default device is a GPU."""

from __future__ import annotations

import mlx.core as mx
import pytest


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("cpu_only") is not None and mx.default_device() != mx.cpu:
        pytest.skip(f"cpu_only: the default device is {mx.default_device()}")
