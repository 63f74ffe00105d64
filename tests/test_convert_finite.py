"""mlx_qat.convert.errors (check_tensors): nothing non-finite is imported or exported. A GGUF
file or a checkpoint holding NaN/inf weights, a model whose loss overflows and a cast that overflows are
refused by name before anything is written, through the command a user runs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from test_convert_fixtures import REPO, run_cli

from mlx_qat.checkpoint import seal_checkpoint
from mlx_qat.cli.convert import main as convert_main
from mlx_qat.convert import ParityReport

gguf = pytest.importorskip(
    "gguf", reason="the gguf package is not installed (pip install 'mlx_qat[gguf]')"
)
from gguf import GGMLQuantizationType as T  # noqa: E402
from test_gguf_import import MIXED, write_gguf  # noqa: E402

F16_INF = np.array([np.inf], np.float16).tobytes()  # b"\x00\x7c"


def convert_cli(*args) -> subprocess.CompletedProcess:
    """`python -m mlx_qat convert ...` in a fresh process (the GGUF import's entry point)."""
    return subprocess.run(
        [sys.executable, "-m", "mlx_qat", "convert", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )


def corrupt(path: Path, tensor: str, data: bytes | None = None, seed: int = 0) -> Path:
    """A copy of the GGUF file `path` with the bytes of `tensor` replaced: by `data` repeated
    over them, else by random bytes (as a bad download or disk gives)."""
    reader = gguf.GGUFReader(str(path))
    t = next(t for t in reader.tensors if t.name == tensor)
    offset, size = int(t.data_offset), int(t.n_bytes)
    del reader
    raw = bytearray(path.read_bytes())
    if data is None:
        new = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    else:
        new = (data * (size // len(data) + 1))[:size]
    raw[offset : offset + size] = new
    out = path.with_name(f"{path.stem}.bad.gguf")
    out.write_bytes(raw)
    return out


@pytest.mark.parametrize(
    "tensor, kind, data, said",
    [
        # every embedding value +inf (a flipped exponent): inf == inf, so the bit-for-bit
        # check passed, "loss nan" was printed and the model published
        ("token_embd.weight", T.F16, F16_INF, "inf in tensor token_embd.weight [F16]"),
        # random bytes in a Q4_1 tensor: NaN scales, reported as a failed import check
        ("blk.0.attn_k.weight", T.Q4_1, None, "NaN in tensor blk.0.attn_k.weight [Q4_1]"),
    ],
    ids=["inf-embedding", "random-q4_1"],
)
def test_gguf_with_corrupt_weights_is_refused_naming_the_tensor(tmp_path, tensor, kind, data, said):
    path = tmp_path / "model.gguf"
    write_gguf(path, types=dict(MIXED, token_embd=T.F16, attn_k=T.Q4_1))
    bad = corrupt(path, tensor, data, seed=3)
    out = tmp_path / "out"
    proc = convert_cli(bad, "--mlx-path", out)
    err = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert said in err and "download it again" in err and "nothing was written" in err
    assert "import check failed" not in proc.stderr
    assert not out.exists() and not list(tmp_path.glob("out.tmp-*"))


def test_gguf_whose_check_loss_overflows_is_refused(tmp_path, capsys):
    """Finite weights whose forward overflows (a final norm of 3e38s): the check-text loss is
    NaN, which must stop the import, not be printed above "check ... ok"."""
    path = tmp_path / "model.gguf"
    write_gguf(path)
    bad = corrupt(path, "output_norm.weight", np.array([3e38], np.float32).tobytes())
    out = tmp_path / "out"
    assert convert_main([str(bad), "--mlx-path", str(out)]) == 2
    err = capsys.readouterr().err
    assert "loss on the check text is nan" in err and "nothing was written" in err
    assert not out.exists()


def _set_weight(checkpoint: Path, key: str, value: float) -> None:
    """Write `value` into the first element of `key` in the checkpoint's weights and reseal the
    checkpoint (its checksums then vouch for the edit, as they would for a diverged run)."""
    weights = dict(mx.load(str(checkpoint / "model.safetensors")))
    w = np.array(weights[key])
    w.flat[0] = value
    weights[key] = mx.array(w)
    mx.save_safetensors(str(checkpoint / "model.safetensors"), weights)
    seal_checkpoint(checkpoint)


@pytest.mark.parametrize("parity", ["check", "--no-parity-check"])
def test_checkpoint_with_nan_weights_is_refused_by_name(tmp_path, runs, parity):
    """Before: a failed parity check "relative difference nan" advising --no-parity-check,
    and with --no-parity-check the NaN model was published."""
    run = runs.make(tmp_path / "run")
    key = "model.layers.1.mlp.down_proj.weight"
    _set_weight(run.checkpoint, key, math.nan)
    out = tmp_path / "mlx_model"
    flags = [] if parity == "check" else [parity]
    proc = run_cli(run.path, "--mlx-path", out, *flags, check=False)
    err = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"checkpoint {run.checkpoint}: NaN in tensor {key} (1 NaN, 0 inf" in err
    assert "earlier checkpoint" in err and "nothing was written" in err
    assert not out.exists()


def test_a_nan_loss_never_passes_and_an_overflowing_cast_is_refused(tmp_path, runs, capsys):
    nan = float("nan")
    assert not ParityReport(nan, nan, 1e-4, 1, 1, "x").passed
    assert not ParityReport(3.0, nan, 1e-4, 1, 1, "x").passed
    assert not ParityReport(math.inf, math.inf, 1e-4, 1, 1, "x").passed
    # finite weights, but the final norm's 3e38 makes the logits inf: the loss is NaN
    run = runs.make(tmp_path / "run")
    _set_weight(run.checkpoint, "model.norm.weight", 3e38)
    out = tmp_path / "a"
    assert convert_main([str(run.path), "--mlx-path", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "validation loss of the model before export is nan" in err and not out.exists()
    # a float16 export of a weight beyond float16's range
    run = runs.make(tmp_path / "run2")
    _set_weight(run.checkpoint, "model.norm.weight", 1e6)
    args = [str(run.path), "--mlx-path", str(out), "--dtype", "float16", "--no-parity-check"]
    assert convert_main(args) == 2
    err = capsys.readouterr().err
    assert "inf in tensor model.norm.weight" in err and "--dtype float32" in err
    assert not out.exists()
    assert json.loads((run.checkpoint / "config.json").read_text())  # the run is untouched
