"""Fixtures for the convert tests: tiny runs made by the real trainer, once per session.

No tests here. `runs.make(run_dir, ...)` copies into `run_dir` a run that `mlx_qat.train.train`
trained (a d2 llama: width 64, 2 layers, tied embeddings, vocab 512; `steps` steps of 4 x 64
tokens) on the session's prepared data, so the checkpoint format, `state.json`, `qat.json`,
`config.yaml` and `tokenizer/` are whatever the trainer writes today:

    run_dir/config.yaml, metrics.jsonl, result.json, tokenizer/
    run_dir/checkpoints/step_XXXXXXXX/{model,optimizer}.safetensors, config.json, qat.json,
                                      state.json, checksums

Each distinct run is trained once per session (a second and more `make` of it only copies), so
a test may change its copy freely. `fake_quant=True` trains QAT from scratch
(`qat_fraction=1`), `fake_quant=False` the FP phase only (`qat_fraction=0`: fake quant off, the
QAT config recorded). Settings are `TrainConfig` fields (`bits`, `quantizer`, `q_mode`, ...),
and `model_config` (a dict) trains any mlx-lm architecture. Per-path formats are the setting
`quant_overrides`; `qat=` hands a whole `QATConfig` (e.g. one with a `predicate`) to the
trainer in place of the one it derives from its settings (`TrainConfig.qat_config`),
and the fixture checks the checkpoint records exactly it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_qat.checkpoint import build_model, latest_checkpoint, load_checkpoint
from mlx_qat.data import prepare_data
from mlx_qat.prepare import qat_layers
from mlx_qat.qat_config import QATConfig
from mlx_qat.quant import QuantSpec
from mlx_qat.train import TrainConfig, train

CORPUS = Path(__file__).parent / "fixtures" / "corpus"
VOCAB = 512
SEQ_LEN = 64
BATCH = 4
EVAL_BATCHES = 2
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Prepared data (512-piece tokenizer, train/val/test shards) from the corpus sample."""
    return prepare_data(CORPUS, tmp_path_factory.mktemp("data"), vocab_size=VOCAB)


@dataclass
class Run:
    """A copy of a trained run, and its model as training left it (the reference for
    train = deploy): rebuilt from the checkpoint, which `TrainedRuns` checked equals the
    trainer's own model, parameter for parameter."""

    path: Path
    checkpoint: Path
    model: nn.Module


class TrainedRuns:
    """Tiny runs trained by `mlx_qat.train.train`, each once per session (see the module)."""

    def __init__(self, root: Path, data):
        self.root, self.data = root, data
        self._trained: dict[str, Path] = {}

    def make(
        self,
        run_dir: Path,
        *,
        steps: int = 3,
        fake_quant: bool = True,
        seed: int = 0,
        qat: QATConfig | None = None,
        model_config: dict | None = None,
        **settings,
    ) -> Run:
        """Copy the run of these settings (trained now if it is the first call) to `run_dir`."""
        spec = dict(
            steps=steps, fake_quant=fake_quant, seed=seed, settings=settings,
            qat=qat.to_dict() if qat is not None else None, model_config=model_config,
        )  # fmt: skip
        key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
        if key not in self._trained:
            self._trained[key] = self._train(self.root / key, spec, qat, settings)
        shutil.copytree(self._trained[key], run_dir)
        checkpoint = latest_checkpoint(run_dir)
        return Run(run_dir, checkpoint, build_model(checkpoint))

    def _train(self, out: Path, spec: dict, qat: QATConfig | None, settings: dict) -> Path:
        if spec["model_config"] is not None:
            out.mkdir(parents=True)
            settings = dict(settings, model_config=str(out / "model_config.json"))
            (out / "model_config.json").write_text(json.dumps(spec["model_config"]))
        cfg = TrainConfig(
            out=str(out / "run"),
            data=[str(self.data.path)],
            preset="d2",
            tokens=spec["steps"] * BATCH * SEQ_LEN,
            batch_size=BATCH,
            seq_len=SEQ_LEN,
            qat_fraction=1.0 if spec["fake_quant"] else 0.0,
            lr=3e-3,
            warmup_steps=0,
            eval_every=0,
            eval_batches=EVAL_BATCHES,
            final_eval_batches=EVAL_BATCHES,
            save_every=0,
            seed=spec["seed"],
            quiet=True,
            cache_limit_mb=256,
            **settings,
        )
        seen = {}

        def keep_trainer(trainer, step):
            seen["trainer"] = trainer

        with pytest.MonkeyPatch.context() as mp:
            if qat is not None:  # the run's one QATConfig (TrainConfig.qat_config)
                mp.setattr(TrainConfig, "qat_config", lambda config: qat)
            result = train(cfg, on_step=keep_trainer)
        run = Path(cfg.out)
        checkpoint = load_checkpoint(latest_checkpoint(run), optimizer=False)
        assert result["steps"] == checkpoint.step == spec["steps"]
        assert checkpoint.qat["fake_quant"] is spec["fake_quant"]
        if qat is not None:
            assert checkpoint.qat["qat_config"] == qat.to_dict()
        # The checkpoint holds the model as training left it.
        trained = seen["trainer"].model
        rebuilt = build_model(checkpoint)
        want, got = (
            dict(tree_flatten(trained.parameters())),
            dict(tree_flatten(rebuilt.parameters())),
        )
        assert want.keys() == got.keys()
        assert all(same(got[k], v) for k, v in want.items())
        flags = [(p, layer.fake_quant) for p, layer in qat_layers(trained)]
        assert flags == [(p, layer.fake_quant) for p, layer in qat_layers(rebuilt)]
        return run


@pytest.fixture(scope="session")
def runs(tmp_path_factory, tiny_data) -> TrainedRuns:
    """The session's `TrainedRuns` on `tiny_data`."""
    return TrainedRuns(tmp_path_factory.mktemp("trained_runs"), tiny_data)


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m mlx_qat convert ...` in a fresh process."""
    proc = subprocess.run(
        [sys.executable, "-m", "mlx_qat", "convert", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"convert failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def spec(mode="affine", bits=4, group_size=64) -> QuantSpec:
    return QuantSpec(mode, bits, group_size)


def exported(path) -> dict[str, mx.array]:
    """All arrays of an exported model dir (sharded or not)."""
    out: dict[str, mx.array] = {}
    for f in sorted(path.glob("model*.safetensors")):
        out.update(mx.load(str(f)))
    return out


def same(a: mx.array, b: mx.array) -> bool:
    """Same dtype, shape and bits."""
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(np.array(a), np.array(b))


def small_shards(monkeypatch, max_bytes: int = 20_000) -> None:
    """Make mlx-lm's `save_model` (the writer `convert` uses) shard at `max_bytes` instead of
    5 GB: it splits through the module-level `mlx_lm.utils.make_shards`, whose own limit is in
    whole GB."""
    import mlx_lm.utils

    def make_shards(weights: dict, max_file_size_gb=None) -> list[dict]:
        shards: list[dict] = []
        for k, v in weights.items():
            if not shards or sum(x.nbytes for x in shards[-1].values()) + v.nbytes > max_bytes:
                shards.append({})
            shards[-1][k] = v
        return shards

    monkeypatch.setattr(mlx_lm.utils, "make_shards", make_shards)
