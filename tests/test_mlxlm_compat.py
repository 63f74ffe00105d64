"""mlx_qat.mlxlm_compat: the private mlx-lm names mlx_qat uses still work in the installed
mlx-lm, a broken one is named, and no other module of the package reaches into mlx-lm."""

from __future__ import annotations

import json
import re
import tempfile
from importlib.metadata import version
from pathlib import Path

import mlx_lm.utils
import pytest
from mlx_lm.tokenizer_utils import TokenizerWrapper

from mlx_qat import mlxlm_compat

PACKAGE = Path(mlxlm_compat.__file__).parent


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

    got = mlxlm_compat.model_classes({"model_type": "llama"})
    if tuple(got) != (llama.Model, llama.ModelArgs):
        raise AssertionError(f"llama gave {got}, not (llama.Model, llama.ModelArgs)")
    try:
        mlxlm_compat.model_classes({"model_type": "no_such_model_type"})
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
        loaded = mlxlm_compat.load_model_with_config(
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
    if mlxlm_compat.hf_tokenizer(TokenizerWrapper(hf)) is not hf:
        raise AssertionError("TokenizerWrapper no longer keeps the HF tokenizer in _tokenizer")


def check() -> list[str]:
    """Exercise each private mlx-lm name mlx_qat uses; one `"<name>: <what failed>"` line per
    broken name (none when the installed mlx-lm still provides them all)."""
    problems = []
    checks = (_check_download, _check_classes, _check_load_config, _check_tokenizer)
    for name, run in zip(mlxlm_compat.PRIVATE, checks, strict=True):
        try:
            run()
        except Exception as e:  # any failure is a broken contract; name it
            problems.append(f"{name}: {type(e).__name__}: {e}")
    return problems


def test_installed_mlx_lm_still_has_every_private_name_mlx_qat_uses():
    problems = check()
    assert not problems, (
        f"mlx-lm {version('mlx-lm')} changed private names that mlx_qat uses (adapt "
        "mlx_qat/mlxlm_compat.py, then raise the mlx-lm bound in pyproject.toml):\n"
        + "\n".join(problems)
    )


def _broken_download(monkeypatch):
    monkeypatch.delattr(mlx_lm.utils, "_download")


def _broken_get_classes(monkeypatch):
    monkeypatch.delattr(mlx_lm.utils, "_get_classes")


def _broken_load_config(monkeypatch):
    # a load_model that reads config.json itself, past the patchable module-level name
    real = mlx_lm.utils.load_model
    own = mlx_lm.utils.load_config

    def load_model(path, *a, **kw):
        return real(path, *a, model_config=own(path), **kw)

    monkeypatch.setattr(mlx_lm.utils, "load_model", load_model)


def _broken_tokenizer(monkeypatch):
    real = TokenizerWrapper.__init__

    def init(self, tokenizer, *a, **kw):
        real(self, tokenizer, *a, **kw)
        self._hf, self._tokenizer = tokenizer, None  # renamed, as a refactor might

    monkeypatch.setattr(TokenizerWrapper, "__init__", init)


@pytest.mark.parametrize(
    "name, brk",
    list(
        zip(
            mlxlm_compat.PRIVATE,
            [_broken_download, _broken_get_classes, _broken_load_config, _broken_tokenizer],
            strict=True,
        )
    ),
)
def test_a_changed_private_name_is_named(monkeypatch, name, brk):
    brk(monkeypatch)
    problems = check()
    assert len(problems) == 1 and problems[0].startswith(name + ": "), problems


# `from mlx_lm... import _x`, `mlx_lm.x._y`, `._tokenizer`, or a patch of an mlx_lm module
PRIVATE_USE = re.compile(
    r"from mlx_lm[\w.]* import (?:[^\n]*[ ,(])?(?<!as )_\w"  # `import x as _y` is fine
    r"|mlx_lm(\.\w+)*\._\w|\._tokenizer\b|patch\.object\(mlx_lm"
)


def test_no_other_module_uses_private_mlx_lm_names():
    users = [
        f"{p.relative_to(PACKAGE.parent)}:{i}: {line.strip()}"
        for p in sorted(PACKAGE.rglob("*.py"))
        if p.name != "mlxlm_compat.py"
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if PRIVATE_USE.search(line)
    ]
    assert not users, "private mlx-lm use outside mlx_qat/mlxlm_compat.py:\n" + "\n".join(users)
