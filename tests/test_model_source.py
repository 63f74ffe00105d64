"""mlx_qat.model_source: one resolver for every verb, and Hugging Face repo ids resolved as
mlx-lm resolves them, from a fake hub cache (laid out as huggingface_hub lays it out: no
network here). A local path always wins over a hub id; offline and not cached, the error says
it is a hub id and how to fetch it; train, convert and eval --teacher take a repo id and do
exactly what they do with the same model as a local folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
from test_convert_fixtures import CORPUS, REPO

from mlx_qat.data import tokenizer_sha256
from mlx_qat.model_source import SourceError, resolve_model
from mlx_qat.train import TrainConfig, Trainer, load_config

REPO_ID = "tiny-org/tiny-model"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_hub(cache: Path, model_dir: Path, repo: str = REPO_ID, commit: str = COMMIT) -> Path:
    """`model_dir` as a snapshot of `repo` in a huggingface_hub cache at `cache`."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / commit
    shutil.copytree(model_dir, snap)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    return snap


@pytest.fixture
def hub(tmp_path, monkeypatch, hf_model):
    """The hf_model folder as the cached snapshot of REPO_ID, offline (in process and in the
    subprocesses the tests start)."""
    cache = tmp_path / "hub"
    snap = fake_hub(cache, hf_model)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return snap


def cli(*args, cwd=REPO) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mlx_qat", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=600, env=os.environ)


def test_a_repo_id_is_its_cached_snapshot_and_a_local_path_wins(
    hub, hf_model, tmp_path, monkeypatch
):
    src = resolve_model(REPO_ID)
    assert (src.kind, src.hub, src.path) == ("mlx", REPO_ID, hub)
    assert src.config == json.loads((hf_model / "config.json").read_text())
    # the tokenizer identity check reads the snapshot's own tokenizer files
    assert src.tokenizer_identity()[0] == tokenizer_sha256(hf_model)
    assert resolve_model(REPO_ID, revision=COMMIT).path == hub
    with pytest.raises(SourceError, match="revision v2"):
        resolve_model(REPO_ID, revision="v2")
    # a folder of the same name in the working directory is what the user means
    monkeypatch.chdir(tmp_path)
    shutil.copytree(hf_model, tmp_path / REPO_ID)
    local = resolve_model(REPO_ID)
    assert local.hub is None and local.path.resolve() == (tmp_path / REPO_ID).resolve()


def test_offline_a_repo_id_not_in_the_cache_says_how_to_fetch_it(hub):
    with pytest.raises(SourceError) as e:
        resolve_model("other-org/missing", what="--model")
    msg = str(e.value)
    assert msg.startswith("--model other-org/missing: ")
    assert "Hugging Face repo id" in msg and "not in the local cache" in msg
    assert "huggingface-cli download other-org/missing" in msg
    # through the command line: one line, exit 1, nothing trained
    proc = cli("train", "--model", "other-org/missing", "--out", hub.parent / "run")
    err = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and "huggingface-cli download other-org/missing" in err, err
    # a path that is no repo id is just missing
    with pytest.raises(SourceError, match="no such file or directory"):
        resolve_model("./nowhere/at/all")


def test_a_trainer_takes_a_repo_id_and_its_config_yaml_keeps_it(hub, hf_model, tmp_path):
    """`Trainer(cfg)` with a repo id resolves it itself and trains what the snapshot folder
    trains; config.yaml records the id and the revision (not the snapshot path), reads back,
    and a resume from it resolves the id again."""
    small = dict(data=[CORPUS], tokens=2 * 2 * 32, batch_size=2, seq_len=32, eval_batches=1,
                 final_eval_batches=1, compile=False, quiet=True)  # fmt: skip
    results = {}
    for name, model, revision in (("hub", REPO_ID, COMMIT), ("local", str(hub), None)):
        t = Trainer(
            TrainConfig(out=str(tmp_path / f"run_{name}"), model=model, revision=revision, **small)
        )
        t.setup()
        results[name] = t.run()
        assert t.model_dir == str(hub)
    assert results["hub"]["eval"] == results["local"]["eval"]
    text = (tmp_path / "run_hub" / "config.yaml").read_text()
    assert str(hub) not in text
    saved = load_config(tmp_path / "run_hub" / "config.yaml")
    assert (saved.model, saved.revision) == (REPO_ID, COMMIT)
    assert saved.hash() == results["hub"]["config_hash"]
    saved.resume = True  # the finished run, continued from its own config.yaml
    again = Trainer(saved)
    again.setup()
    assert again.model_dir == str(hub) and again.step == results["hub"]["steps"]


@pytest.mark.slow
def test_train_convert_and_eval_teacher_take_a_repo_id(hub, hf_model, tmp_path):
    """Each verb given the repo id does what it does given the same model as a folder."""
    common = ["--data", CORPUS, "--tokens", 3 * 2 * 32, "--batch-size", 2, "--seq-len", 32,
              "--eval-batches", 1, "--final-eval-batches", 1, "--no-compile", "--quiet",
              "--objective", "kd"]  # fmt: skip
    results = {}
    for name, model in (("hub", REPO_ID), ("local", hf_model)):
        out = tmp_path / f"run_{name}"
        proc = cli("train", "--model", model, "--out", out, *common)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[name] = json.loads((out / "result.json").read_text())
    assert results["hub"]["eval"] == results["local"]["eval"]
    assert results["hub"]["pretrained"] == results["local"]["pretrained"]
    saved = (tmp_path / "run_hub" / "config.yaml").read_text()
    assert f"model: {REPO_ID}" in saved and str(hub) not in saved  # the id, not the snapshot
    # convert: the repo id's PTQ export is the folder's, byte for byte
    for name, model in (("hub", REPO_ID), ("local", hf_model)):
        proc = cli("convert", model, "--mlx-path", tmp_path / f"{name}_q4", "--ptq",
                   "--no-parity-check", "--quiet")  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (tmp_path / f"{n}_q4" / "model.safetensors" for n in ("hub", "local"))
    assert a.read_bytes() == b.read_bytes()
    # eval --teacher: the KL to the repo id's model is the KL to the folder's
    kls = {}
    for name, model in (("hub", REPO_ID), ("local", hf_model)):
        proc = cli("eval", tmp_path / "run_local", "--teacher", model, "--eval-batches", 1,
                   "--out", tmp_path / f"eval_{name}")  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        ev = json.loads((tmp_path / f"eval_{name}" / "eval.json").read_text())
        kls[name] = ev["qat"]["kl"]
    assert kls["hub"] == kls["local"] and kls["hub"] > 0
