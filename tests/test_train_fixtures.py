"""Shared fixtures for the trainer tests (no tests here): tiny data, tiny configs, and a run
stopped mid-way.

The data is the committed corpus sample (`tests/fixtures/corpus`) with a 512-piece
tokenizer, prepared once per session; models are the `d2` preset (width 64, 2 layers).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mlx_qat.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).parent / "fixtures" / "corpus"
VOCAB = 512


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """An `mlx_qat.data` output dir (tokenizer + shards) built from the corpus sample."""
    from mlx_qat.data import prepare_data

    out = tmp_path_factory.mktemp("train_data")
    prepare_data(CORPUS, out, vocab_size=VOCAB, val_fraction=0.1, seed=0)
    return out


def without_test_split(data_dir: Path, dest: Path) -> Path:
    """A copy of prepared shards as `mlx_qat.data` wrote them before the test split existed:
    train and val only (no test.npy, no test entries or test_fraction in the manifest)."""
    import json
    import shutil

    from mlx_qat.data import load_bundle

    b = load_bundle(data_dir)
    old = dest / b.path.name
    shutil.copytree(b.path, old)
    (old / "test.npy").unlink()
    m = json.loads((old / "manifest.json").read_text())
    for key in ("splits", "tokens", "documents", "text_bytes", "bytes_per_token"):
        del m[key]["test"]
    del m["test_fraction"]
    m["tokenizer"]["dir"] = str(b.tokenizer_dir.resolve())
    (old / "manifest.json").write_text(json.dumps(m))
    return old


def tiny_config(data_dir: Path, out: Path, **kw) -> TrainConfig:
    """A run of a few dozen steps of 4 x 32 tokens on the d2 preset."""
    base = dict(
        out=str(out),
        data=[str(data_dir)],
        preset="d2",
        tokens=40 * 4 * 32,
        batch_size=4,
        seq_len=32,
        qat_fraction=0.25,
        lr=3e-3,
        warmup_steps=4,
        eval_every=0,
        eval_batches=2,
        final_eval_batches=3,  # the whole split is the default; it costs seconds per run here
        save_every=0,
        quiet=True,
        cache_limit_mb=256,
    )
    base.update(kw)
    return TrainConfig(**base)


class Stop(Exception):
    """Raised from `on_step` to stop a run as a kill would (after its last checkpoint)."""


def train_until(config: TrainConfig, step: int) -> None:
    """Run `config` and stop it at `step`, as if killed there (nothing after the last
    checkpoint is kept)."""
    from mlx_qat.train import train

    def stop(_trainer, s):
        if s == step:
            raise Stop

    with pytest.raises(Stop):
        train(config, on_step=stop)


def timeless_records(run: Path, kind: str) -> list[dict]:
    """The run's metrics records of `kind` without the wall-clock fields (tokens_per_s, step_s,
    peak_memory_mb): what two runs of the same config must agree on bit for bit."""
    from mlx_qat.train.metrics import read_metrics

    clock = ("tokens_per_s", "step_s", "peak_memory_mb")
    return [{k: v for k, v in r.items() if k not in clock} for r in read_metrics(run, kind)]


@pytest.fixture
def readonly_dir(tmp_path) -> Path:
    """A directory nothing can be created in: chmod 0o555, or (as root, whom permissions do
    not stop) /sys/fs, a read-only mount on Linux."""
    import os

    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        yield ro
        ro.chmod(0o755)
        return
    if not Path("/sys/fs").is_dir() or _writable("/sys/fs"):
        pytest.skip("running as root without a read-only mount to write into")
    yield Path("/sys/fs")


def _writable(path: str) -> bool:
    import os

    probe = Path(path) / f"mlx_qat_probe_{os.getpid()}"
    try:
        probe.mkdir()
    except OSError:
        return False
    probe.rmdir()
    return True
