"""`mlx_qat.data --tokenizer` takes a Hugging Face repo id as `--model` does (fake offline hub
cache, `test_model_source.hub`): the same token ids as the snapshot's folder, the id kept in
config.yaml, and offline an id not in the cache is one line saying how to fetch it."""

from __future__ import annotations

import numpy as np
import yaml
from test_convert_fixtures import CORPUS, tiny_data  # noqa: F401  (a fixture)
from test_model_source import REPO_ID, cli, hub  # noqa: F401  (hub: the fixture)

from mlx_qat.data import load_bundle


def test_data_tokenizer_takes_a_repo_id(hub, hf_model, tmp_path):  # noqa: F811
    by_id, by_dir = tmp_path / "by_id", tmp_path / "by_dir"
    for tok, out in ((REPO_ID, by_id), (hf_model, by_dir)):
        proc = cli("data", "--input", CORPUS, "--out", out, "--tokenizer", tok, "--quiet")
        assert proc.returncode == 0, proc.stderr
    a, b = load_bundle(by_id), load_bundle(by_dir)
    for split in ("train", "val", "test"):
        assert np.array_equal(np.asarray(getattr(a, split)), np.asarray(getattr(b, split)))
    assert yaml.safe_load((by_id / "config.yaml").read_text())["tokenizer"] == REPO_ID
    proc = cli("data", "--input", CORPUS, "--out", tmp_path / "x", "--tokenizer", "no-org/none")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "huggingface-cli download no-org/none" in proc.stderr


def test_diagnose_takes_a_repo_id(hub, hf_model, tiny_data):  # noqa: F811
    """`diagnose ID` measures the snapshot: the same numbers as the folder, the id named."""
    from mlx_qat.diagnose import DiagnoseSettings, diagnose

    cheap = DiagnoseSettings(random_draws=0, sr_draws=0, attribution="off", alpha_points=5)
    kw = dict(data=str(tiny_data.path), eval_batches=1, settings=cheap, group_size=64)
    by_id, by_dir = diagnose(REPO_ID, **kw), diagnose(str(hf_model), **kw)
    numbers = {k: v for k, v in by_dir.items() if isinstance(v, (int, float))}
    assert numbers and {k: by_id[k] for k in numbers} == numbers, sorted(numbers)
    assert by_id["covered"] == by_dir["covered"]
