"""README's Layout section matches the package tree: every module is named in it, and every
`mlx_qat/...` path it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _layout() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("```", text.index("## Layout"))
    return text[start : text.index("```", start + 3)]


def test_every_module_is_named():
    block = _layout()
    missing = [
        str(p.relative_to(ROOT))
        for p in sorted((ROOT / "mlx_qat").rglob("*.py"))
        if p.stem not in ("__init__", "__main__") and not re.search(rf"\b{p.stem}\b", block)
    ]
    assert not missing, f"README's Layout does not name: {missing}"


def test_every_named_path_exists():
    paths = re.findall(r"mlx_qat/[\w/]*\w(?:\.py)?/?", _layout())
    assert len(paths) > 10
    assert [p for p in paths if not (ROOT / p).exists()] == []
