"""mlx_qat.convert.gguf_llama's metadata checks: a llama GGUF whose metadata holds an impossible
value is one line naming the key, not a traceback (TypeError, ZeroDivisionError) further on.
The files are the tiny GGUF of test_gguf_import with one value changed as it is written."""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_convert_fixtures import REPO

from mlx_qat.cli.convert import main as convert_main

gguf = pytest.importorskip(
    "gguf", reason="the gguf package is not installed (pip install 'mlx_qat[gguf]')"
)
from test_gguf_import import write_gguf  # noqa: E402


def gguf_with(path, monkeypatch, method: str, value):
    """The tiny llama GGUF, with `GGUFWriter.<method>` writing `value` instead of its own."""
    original = getattr(gguf.GGUFWriter, method)
    with monkeypatch.context() as m:
        m.setattr(gguf.GGUFWriter, method, lambda self, _v: original(self, value))
        write_gguf(path)
    return path


@pytest.mark.parametrize(
    "method, value, said",
    [
        ("add_layer_norm_rms_eps", float("nan"), "llama.attention.layer_norm_rms_epsilon = nan"),
        ("add_head_count_kv", 0, "llama.attention.head_count_kv = 0"),
    ],
    ids=["eps-nan", "kv-heads-0"],
)
def test_bad_gguf_metadata_is_one_line_naming_the_key(tmp_path, monkeypatch, method, value, said):
    path = gguf_with(tmp_path / "bad.gguf", monkeypatch, method, value)
    proc = subprocess.run(
        [sys.executable, "-m", "mlx_qat", "convert", str(path), "--mlx-path", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    err = [s for s in proc.stderr.splitlines() if not s.startswith("[")]
    assert len(err) == 1 and said in err[0] and "must be" in err[0], proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "method, value, said",
    [
        ("add_head_count_kv", 3, "head_count_kv = 3, but it must be a divisor of head_count 4"),
        ("add_rope_freq_base", -1.0, "llama.rope.freq_base = -1.0"),
        ("add_layer_norm_rms_eps", float("inf"), "layer_norm_rms_epsilon = inf"),
        ("add_block_count", 0, "llama.block_count = 0"),
        ("add_context_length", 0, "llama.context_length = 0"),
        ("add_bos_token_id", 100_000, "tokenizer.ggml.bos_token_id = 100000"),
    ],
)
def test_other_impossible_metadata_values_are_refused_by_key(
    tmp_path, monkeypatch, capsys, method, value, said
):
    path = gguf_with(tmp_path / "bad.gguf", monkeypatch, method, value)
    assert convert_main([str(path), "--mlx-path", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and said in err, err
