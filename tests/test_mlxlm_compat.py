"""mlx_qat.mlxlm_compat: the private mlx-lm names mlx_qat uses still work in the installed
mlx-lm, a broken one is named, and no other module of the package reaches into mlx-lm."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import mlx_lm.utils
import pytest
from mlx_lm.tokenizer_utils import TokenizerWrapper

from mlx_qat import mlxlm_compat

PACKAGE = Path(mlxlm_compat.__file__).parent


def test_installed_mlx_lm_still_has_every_private_name_mlx_qat_uses():
    problems = mlxlm_compat.check()
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
    problems = mlxlm_compat.check()
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
