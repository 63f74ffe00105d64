"""Every private mlx-lm name mlx_qat relies on (`PRIVATE`), in one module; everything else
it uses from mlx-lm is public. `_download` (a repo id to a local snapshot, `hub_snapshot`),
`_get_classes` (the classes a config.json names, `model_classes`), the module-level
`load_config` that `load_model` reads config.json through (`load_model_with_config`) and
`TokenizerWrapper._tokenizer` (`hf_tokenizer`) may change in any mlx-lm release:
pyproject.toml bounds mlx-lm below its next minor release, and `check()` (run by
`tests/test_mlxlm_compat.py`) exercises each, so an upgrade that breaks one fails by name.
mlx-lm is imported lazily: importing it costs seconds (transformers).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

# What check() verifies, by the name an mlx-lm upgrade would break.
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


def _check_download() -> None:
    import inspect

    import mlx_lm.utils

    params = inspect.signature(mlx_lm.utils._download).parameters
    if "revision" not in params:
        raise AssertionError(f"_download takes {list(params)}, no revision")
    if not isinstance(mlx_lm.utils.DEFAULT_ALLOW_PATTERNS, list):
        raise AssertionError("DEFAULT_ALLOW_PATTERNS is no longer a list of patterns")
    with tempfile.TemporaryDirectory() as tmp:  # an existing path is returned as it is
        if Path(mlx_lm.utils._download(tmp)) != Path(tmp):
            raise AssertionError("_download no longer returns an existing local path as it is")


def _check_classes() -> None:
    import mlx_lm.models.llama as llama

    got = model_classes({"model_type": "llama"})
    if tuple(got) != (llama.Model, llama.ModelArgs):
        raise AssertionError(f"llama gave {got}, not (llama.Model, llama.ModelArgs)")
    try:
        model_classes({"model_type": "no_such_model_type"})
    except ValueError:
        return
    raise AssertionError("an unknown model_type no longer raises ValueError")


def _check_load_config() -> None:
    import mlx.core as mx
    import mlx.utils
    import mlx_lm.models.llama as llama

    config = {"model_type": "llama", "hidden_size": 8, "num_hidden_layers": 1,
              "intermediate_size": 16, "num_attention_heads": 1, "num_key_value_heads": 1,
              "rms_norm_eps": 1e-5, "vocab_size": 16, "tie_word_embeddings": True}  # fmt: skip
    model = llama.Model(llama.ModelArgs.from_dict(config))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        mx.save_safetensors(
            str(path / "model.safetensors"), dict(mlx.utils.tree_flatten(model.parameters()))
        )
        (path / "pending.json").write_text(json.dumps(config))  # no config.json at all
        loaded = load_model_with_config(
            path, lambda p: json.loads((p / "pending.json").read_text())
        )
    if loaded.args.hidden_size != 8:
        raise AssertionError("load_model did not build the model of the config it was given")


def _check_tokenizer() -> None:
    from mlx_lm.tokenizer_utils import TokenizerWrapper
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({"<unk>": 0, "</s>": 1, "a": 2, "b": 3}, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>")
    if hf_tokenizer(TokenizerWrapper(hf)) is not hf:
        raise AssertionError("TokenizerWrapper no longer keeps the HF tokenizer in _tokenizer")


def check() -> list[str]:
    """Exercise each private mlx-lm name mlx_qat uses; one `"<name>: <what failed>"` line per
    broken name (none when the installed mlx-lm still provides them all)."""
    problems = []
    checks = (_check_download, _check_classes, _check_load_config, _check_tokenizer)
    for name, run in zip(PRIVATE, checks, strict=True):
        try:
            run()
        except Exception as e:  # any failure is a broken contract; name it
            problems.append(f"{name}: {type(e).__name__}: {e}")
    return problems
