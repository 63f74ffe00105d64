"""The scripts in examples/, run as a user runs them (a subprocess from the repo root), tiny.

`qat_mlx_lm_model.py` trains a run on a tiny float mlx-lm model directory made here, and
`export_and_generate.py` exports that run: the two share a module-scoped fixture.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import float_model_dir

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
CORPUS = Path(__file__).parent / "fixtures" / "corpus"
LINE = re.compile(r"^(\w+): (.*)$")


def run(*cmd: str | Path, timeout: int = 300) -> dict[str, str]:
    """Run `python *cmd` from the repo root; its `name: value` lines, and "stdout"."""
    proc = subprocess.run(
        [sys.executable, *map(str, cmd)],
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    lines = {m[1]: m[2] for m in map(LINE.match, proc.stdout.splitlines()) if m}
    return {**lines, "stdout": proc.stdout}


def test_qat_from_scratch(tmp_path):
    out = tmp_path / "model"
    text = CORPUS / "shakespeare.txt.gz"
    args = ["--text", text, "--fp-steps", 60, "--qat-steps", 30, "--batch-size", 8]
    res = run(EXAMPLES / "qat_from_scratch.py", *args, "--seq-len", 64, "--out", out)
    loss = {k: float(v) for k, v in res.items() if k.startswith("loss_")}
    assert math.isclose(loss["loss_init"], math.log(256), rel_tol=0.2)  # uniform over bytes
    assert loss["loss_fp"] < loss["loss_init"] - 2.0
    assert loss["loss_ptq"] >= loss["loss_fp"] - 0.05  # rounding to 4 bit costs, barely
    assert loss["loss_qat"] < loss["loss_ptq"]  # the QAT phase trains on the grid
    assert float(res["parity_rel_diff"]) <= 1e-5  # train = deploy
    assert loss["loss_deployed"] == pytest.approx(loss["loss_qat"], rel=1e-5)
    # The saved weights are a stock quantized mlx-lm model.
    from mlx_lm.utils import load_model

    model, config = load_model(out)
    assert config["quantization"]["bits"] == 4
    kinds = {type(m).__name__ for _, m in model.named_modules()}
    assert {"QuantizedLinear", "QuantizedEmbedding"} <= kinds and "Linear" not in kinds


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A run of `qat_mlx_lm_model.py` on a float d2 model dir (random init) and its output."""
    tmp = tmp_path_factory.mktemp("examples")
    src, _ = float_model_dir(tmp / "float_model", vocab=512, seed=7)
    data = tmp / "data"
    run("-m", "mlx_qat", "data", "--input", CORPUS, "--out", data, "--vocab-size", 512)
    out = tmp / "run"
    args = ["--model", src, "--data", data, "--out", out, "--tokens", 40 * 8 * 64]
    args += ["--batch-size", 8, "--seq-len", 64, "--lr", 3e-3, "--eval-batches", 4]
    return out, run(EXAMPLES / "qat_mlx_lm_model.py", *args)


def test_qat_mlx_lm_model(qat_run):
    out, res = qat_run
    assert res["run_dir"] == str(out) and res["steps"] == "40 (fp 0, qat 40)"
    first, last = float(res["train_loss_first"]), float(res["train_loss_last"])
    assert first == pytest.approx(math.log(512), rel=0.2)  # random init
    assert last < first - 1.0
    val = {k: float(res[f"val_loss_{k}"]) for k in ("fp", "ptq", "qat")}
    assert all(math.isfinite(v) and v < first - 1.0 for v in val.values())
    assert (out / "checkpoints").is_dir() and (out / "tokenizer").is_dir()


def test_export_and_generate(qat_run, tmp_path):
    run_dir, trained = qat_run
    mlx_path = tmp_path / "mlx_model"
    args = ["--mlx-path", mlx_path, "--prompt", "To be", "--max-tokens", 12]
    res = run(EXAMPLES / "export_and_generate.py", run_dir, *args)
    assert res["mlx_path"] == str(mlx_path)
    assert json.loads((mlx_path / "config.json").read_text())["quantization"]["bits"] == 4
    rel_diff = float(res["parity_rel_diff"].split()[0])
    assert rel_diff <= 1e-4  # train = deploy, checked by convert on the run's validation data
    # The loss convert measured before export is the one the trainer reported at the end.
    assert float(res["loss_fake_quant"]) == pytest.approx(float(trained["val_loss_qat"]), rel=1e-5)
    assert 4.0 < float(res["bits_per_weight"]) < 8.0
    assert 1 <= int(res["generated_tokens"]) <= 12
    assert "--- generated (greedy) ---\nTo be" in res["stdout"]


# What the examples may import from mlx_qat: the stable public API.
PUBLIC = {
    "mlx_qat": {"QATConfig", "QuantSpec", "prepare", "quantize", "set_fake_quant"}
    | {"init_quantizers", "fake_quantize", "qat_layers"},
    "mlx_qat.train": {"TrainConfig", "train"},
    "mlx_qat.convert": {"convert"},
    "mlx_qat.models": {"preset_config", "model_from_config"},
}


def test_examples_are_short_scripts_on_the_public_api():
    paths = sorted(EXAMPLES.glob("*.py"))
    assert [p.name for p in paths] == [
        "export_and_generate.py",
        "qat_from_scratch.py",
        "qat_mlx_lm_model.py",
    ]
    for path in paths:
        src = path.read_text()
        assert src.startswith('"""') and f"python examples/{path.name}" in src, path.name
        assert len(src.splitlines()) <= 120, path.name
        for module, names in re.findall(r"^from (mlx_qat\S*) import (.+)$", src, re.M):
            assert {n.strip() for n in names.split(",")} <= PUBLIC.get(module, set()), path.name
        for name in re.findall(r"\bmlx_qat\.(\w+)\(", src):
            assert name in PUBLIC["mlx_qat"], (path.name, name)
