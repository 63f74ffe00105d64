"""What `convert` reads: a training run, one of its checkpoints, or an mlx-lm model directory.

Accepted inputs (`resolve_source`):

* a run directory (`config.yaml`, `tokenizer/`, `checkpoints/step_XXXXXXXX/`): its latest
  complete checkpoint;
* a checkpoint directory (`model.safetensors`, `config.json`, `qat.json`, `state.json`);
* an mlx-lm model directory (`config.json` + `model*.safetensors`), float or quantized.

Checkpoints are read and rebuilt by the trainer's own `mlx_qat.checkpoint`
(`load_checkpoint`, `build_model`), so `convert` sees exactly the model the trainer saved.
Every failure is a `ConvertError` that names the path and says what to do.
"""

from __future__ import annotations

import glob
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import mlx.nn as nn

from ..checkpoint import (
    CHECKPOINTS,
    Checkpoint,
    CheckpointError,
    build_model,
    load_checkpoint,
    qat_config_of,
)
from .errors import ConvertError

logger = logging.getLogger(__name__)

_INPUTS = (
    "pass a training run directory (with checkpoints/), one checkpoint directory "
    "(checkpoints/step_XXXXXXXX) or an mlx-lm model directory (config.json + model*.safetensors)"
)


@dataclass
class Source:
    """A resolved input.

    Attributes:
        kind: "checkpoint" (a training checkpoint) or "mlx" (an mlx-lm model directory).
        path: the checkpoint or model directory actually read.
        config: its mlx-lm model config (config.json).
        run_dir: the training run holding the checkpoint, if any.
        checkpoint: the loaded checkpoint (metadata and weights), for kind "checkpoint".
    """

    kind: str
    path: Path
    config: dict
    run_dir: Path | None = None
    checkpoint: Checkpoint | None = None
    qat: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)

    @property
    def step(self) -> int | None:
        return self.state.get("step")

    @property
    def quantized(self) -> bool:
        """An mlx-lm directory whose weights are already quantized."""
        return "quantization" in self.config or "quantization_config" in self.config

    @property
    def qat_config(self):
        """The checkpoint's `QATConfig`, or None for a model that was never prepared."""
        if self.checkpoint is None:
            return None
        try:
            return qat_config_of(self.checkpoint)
        except CheckpointError as e:
            raise ConvertError(str(e)) from None

    @property
    def trained_with_qat(self) -> bool:
        """True when the last forward of this checkpoint used fake quantization."""
        return self.qat_config is not None and bool(self.qat.get("fake_quant", False))

    @property
    def tokenizer_dir(self) -> Path | None:
        """The run's tokenizer directory (sentencepiece + HF files), if there is one."""
        if self.run_dir is not None and (self.run_dir / "tokenizer").is_dir():
            return self.run_dir / "tokenizer"
        return None

    @property
    def vocab_size(self) -> int | None:
        """The model's vocabulary (embedding rows), from config.json (or its text_config)."""
        text = self.config.get("text_config")
        n = self.config.get("vocab_size") or (text or {}).get("vocab_size")
        return int(n) if n else None

    def recorded_tokenizer(self) -> tuple[str, str] | None:
        """(sha256, where recorded) of the tokenizer the run's data was encoded with.

        From the checkpoint's state.json, `tokenizer_sha256`, when the trainer recorded it
        (sha256 of `tokenizer.model`, `mlx_qat.data.tokenizer_sha256`); else from the manifest
        of the token shards it trained on (`data.shards`), when they are still there. None for
        an mlx-lm model or a run that records neither.
        """
        data = self.state.get("data")
        data = data if isinstance(data, dict) else {}
        for recorded in (self.state, data):
            if recorded.get("tokenizer_sha256"):
                return str(recorded["tokenizer_sha256"]), str(self.path / "state.json")
        manifest = Path(str(data.get("shards", ""))) / "manifest.json"
        if data.get("shards") and manifest.is_file():
            sha = (_read_json(manifest).get("tokenizer") or {}).get("sha256")
            if sha:
                return str(sha), str(manifest)
        return None

    def describe(self) -> str:
        if self.kind == "checkpoint":
            where = self.run_dir if self.run_dir is not None else self.path
            return f"{where} (step {self.step}, phase {self.qat.get('phase', '?')})"
        return f"{self.path} ({'quantized' if self.quantized else 'float'} mlx-lm model)"


def resolve_source(path: str | Path) -> Source:
    """Find out what `path` is and read it (a checkpoint's weights are loaded here)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ConvertError(f"{path}: no such file or directory; {_INPUTS}")
    if not path.is_dir():
        raise ConvertError(f"{path}: not a directory; {_INPUTS}")
    if (path / CHECKPOINTS).is_dir() or any(
        (path / f).exists() for f in ("qat.json", "state.json", "optimizer.safetensors")
    ):
        try:
            ckpt = load_checkpoint(path, optimizer=False)
        except CheckpointError as e:
            raise ConvertError(str(e)) from None
        parent = ckpt.path.parent
        run_dir = parent.parent if parent.name == CHECKPOINTS else None
        return Source(
            "checkpoint", ckpt.path, ckpt.model_config, run_dir, ckpt, ckpt.qat, ckpt.state
        )
    if (path / "config.json").exists():
        config = _read_json(path / "config.json")
        if not glob.glob(str(path / "model*.safetensors")):
            raise ConvertError(f"{path}: config.json but no model*.safetensors; {_INPUTS}")
        return Source("mlx", path, config)
    raise ConvertError(f"{path}: not a run, checkpoint or model directory; {_INPUTS}")


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            out = json.load(f)
    except (OSError, ValueError) as e:
        raise ConvertError(f"{path}: cannot read it ({e}); the file is corrupt") from e
    if not isinstance(out, dict):
        raise ConvertError(f"{path}: must be a JSON object, got {type(out).__name__}")
    return out


def load_checkpoint_model(source: Source) -> nn.Module:
    """The model as the trainer saved it: prepared (QAT layers), weights loaded, fake quant set."""
    try:
        model = build_model(source.checkpoint)
    except CheckpointError as e:
        raise ConvertError(str(e)) from None
    source.checkpoint.weights = {}  # the model holds them now
    return model


def load_mlx_model(source: Source) -> nn.Module:
    """An mlx-lm directory's model, through mlx-lm's own loader (quantized layers included)."""
    from mlx_lm.utils import load_model

    try:
        model, _ = load_model(source.path)
    except (ValueError, RuntimeError, FileNotFoundError, KeyError) as e:
        raise ConvertError(f"{source.path}: mlx-lm cannot load this model ({e})") from e
    return model


@dataclass
class EvalSetup:
    """Where the run's validation data is and how the trainer batched it.

    `data_dir` is prepared data (`mlx_qat.data` output); None with `missing` saying why.
    """

    data_dir: Path | None
    seq_len: int = 128
    batch_size: int = 8
    eval_batches: int | None = 8
    missing: str | None = None


def run_eval_setup(source: Source) -> EvalSetup:
    """The trainer's validation settings: its shards (state.json) and config.yaml batching."""
    from ..data.resolve import is_prepared
    from ..train.config import load_config

    run_dir = source.run_dir
    if run_dir is None or not (run_dir / "config.yaml").is_file():
        return EvalSetup(None, missing="no run config.yaml")
    try:
        cfg = load_config(run_dir / "config.yaml")
    except (OSError, ValueError, TypeError) as e:
        raise ConvertError(f"{run_dir / 'config.yaml'}: cannot read the run config ({e})") from e
    out = EvalSetup(None, cfg.seq_len, cfg.batch_size, cfg.eval_batches)
    # The shards the trainer used (absolute path in state.json), else its --data when that
    # was a prepared directory (relative to where training ran, or beside the run).
    shards = (source.state.get("data") or {}).get("shards")
    candidates = [Path(shards)] if shards else []
    if isinstance(cfg.data, list) and len(cfg.data) == 1:
        d = Path(str(cfg.data[0])).expanduser()
        candidates += [d, run_dir.parent / d, run_dir / d]
    for c in candidates:
        if is_prepared(c):
            out.data_dir = c
            return out
    out.missing = f"the run's data ({cfg.data or 'default corpus'}) is not prepared data here"
    return out
