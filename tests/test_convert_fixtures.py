"""Fixtures for the convert tests: tiny QAT training runs in the trainer's checkpoint format.

No tests here. `make_run` trains a 2-layer, width-64 llama for a few steps with fake
quantization on and saves it exactly as the trainer does:

    run_dir/config.yaml, metrics.jsonl, tokenizer/
    run_dir/checkpoints/step_XXXXXXXX/{model,optimizer}.safetensors, config.json, qat.json,
                                      state.json
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx_lm.models import llama

from mlx_qat.checkpoint import save_checkpoint
from mlx_qat.data import eval_batches, prepare_data
from mlx_qat.data.resolve import copy_tokenizer
from mlx_qat.prepare import prepare, set_fake_quant
from mlx_qat.qat_config import QATConfig
from mlx_qat.quant import QuantSpec
from mlx_qat.train.config import TrainConfig

CORPUS = Path(__file__).parent / "fixtures" / "corpus"
VOCAB = 512
SEQ_LEN = 64
BATCH = 4
EVAL_BATCHES = 2
REPO = Path(__file__).resolve().parents[1]

MODEL_CONFIG = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "vocab_size": VOCAB,
    "tie_word_embeddings": True,
    "max_position_embeddings": 256,
}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Prepared data (512-piece tokenizer, train/val shards) from the committed corpus sample."""
    return prepare_data(CORPUS, tmp_path_factory.mktemp("data"), vocab_size=VOCAB)


def loss_fn(model, x):
    logits = model(x[:, :-1]).astype(mx.float32)
    return nn.losses.cross_entropy(logits, x[:, 1:], reduction="mean")


@dataclass
class Run:
    """A saved run and the model as training left it (the reference for train = deploy)."""

    path: Path
    checkpoint: Path
    model: nn.Module


def make_run(
    run_dir: Path,
    data,
    qat: QATConfig | None = None,
    *,
    steps: int = 3,
    fake_quant: bool = True,
    seed: int = 0,
    config: dict | None = None,
) -> Run:
    """Train `steps` Adam steps (fake quant as given) and save one checkpoint."""
    mx.random.seed(seed)
    cfg = dict(MODEL_CONFIG, **(config or {}))
    model = llama.Model(llama.ModelArgs.from_dict(cfg))
    if qat is not None:
        prepare(model, qat, enabled=fake_quant)
        set_fake_quant(model, fake_quant)
    opt = optim.Adam(learning_rate=3e-3)
    step_fn = nn.value_and_grad(model, loss_fn)
    train = eval_batches(data.train, BATCH, SEQ_LEN, steps)
    for x in train:
        _, grads = step_fn(model, x)
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state)
    ckpt = save_run(run_dir, data, model, opt, cfg, qat, fake_quant, steps)
    return Run(run_dir, ckpt, model)


def save_run(run_dir, data, model, opt, cfg, qat, fake_quant, step) -> Path:
    """Save as the trainer does (its own `save_checkpoint`, `copy_tokenizer`, config.yaml)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    train_cfg = TrainConfig(
        data=[str(data.path)], seq_len=SEQ_LEN, batch_size=BATCH, eval_batches=EVAL_BATCHES
    )
    (run_dir / "config.yaml").write_text(train_cfg.to_yaml())
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": step}) + "\n")
    copy_tokenizer(data, run_dir)
    phase = "qat" if fake_quant and qat is not None else "fp"
    qat_json = {
        "qat_config": qat.to_dict() if qat is not None else None,
        "fake_quant": phase == "qat",
        "phase": phase,
    }
    state = {
        "tokens_seen": step * BATCH * SEQ_LEN,
        "phase": phase,
        "data": {"shards": str(data.path)},
    }
    return save_checkpoint(run_dir, step, model, opt, state, cfg, qat_json)


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
