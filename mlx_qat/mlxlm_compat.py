"""Every private mlx-lm name mlx_qat relies on (`PRIVATE`), in one module; everything else
it uses from mlx-lm is public. `_download` (a repo id to a local snapshot, `hub_snapshot`),
`_get_classes` (the classes a config.json names, `model_classes`), the module-level
`load_config` that `load_model` reads config.json through (`load_model_with_config`) and
`TokenizerWrapper._tokenizer` (`hf_tokenizer`) may change in any mlx-lm release:
pyproject.toml bounds mlx-lm below its next minor release, and `tests/test_mlxlm_compat.py`
exercises each, so an upgrade that breaks one fails by name.
mlx-lm is imported lazily: importing it costs seconds (transformers).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

# What tests/test_mlxlm_compat.py exercises, by the name an mlx-lm upgrade would break.
PRIVATE = (
    "mlx_lm.utils._download",
    "mlx_lm.utils._get_classes",
    "mlx_lm.utils.load_config (read by mlx_lm.utils.load_model)",
    "mlx_lm.tokenizer_utils.TokenizerWrapper._tokenizer",
)


def hub_snapshot(repo: str, revision: str | None = None) -> Path:
    """The local folder of Hugging Face repo `repo` at `revision`, as mlx-lm resolves it: the
    local cache first (mlx-lm's `DEFAULT_ALLOW_PATTERNS`), else `mlx_lm.utils._download`.
    huggingface_hub's errors are raised as they are (`LocalEntryNotFoundError`, ...)."""
    import mlx_lm.utils
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(
                repo,
                revision=revision,
                local_files_only=True,
                allow_patterns=mlx_lm.utils.DEFAULT_ALLOW_PATTERNS,
            )
        )
    except LocalEntryNotFoundError:
        pass
    return Path(mlx_lm.utils._download(repo, revision=revision))


def model_classes(config: dict) -> tuple[type, type]:
    """`(Model, ModelArgs)` of mlx-lm's module for `config["model_type"]` (with its model-type
    remappings); ValueError (mlx-lm's message) when mlx-lm has no such model type."""
    from mlx_lm.utils import _get_classes

    return _get_classes(config)


def load_model_with_config(path: str | Path, read_config: Callable[[Path], dict]) -> Any:
    """`mlx_lm.utils.load_model(path)` with the config dict from `read_config(path)` instead
    of `<path>/config.json` (everything else is mlx-lm's); returns the model."""
    from unittest import mock

    import mlx_lm.utils

    with mock.patch.object(mlx_lm.utils, "load_config", lambda p: read_config(Path(p))):
        model, _ = mlx_lm.utils.load_model(Path(path))
    return model


def hf_tokenizer(wrapper: Any) -> Any:
    """The Hugging Face tokenizer inside an mlx-lm `TokenizerWrapper`; anything else as it is."""
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    return wrapper._tokenizer if isinstance(wrapper, TokenizerWrapper) else wrapper
