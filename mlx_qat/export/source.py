"""What `convert` reads: a training run, one of its checkpoints, or an mlx-lm model directory.

Accepted inputs (`resolve_source`):

* a run directory (`config.yaml`, `tokenizer/`, `checkpoints/step_XXXXXXXX/`): its latest
  complete checkpoint;
* a checkpoint directory (`model.safetensors`, `config.json`, `qat.json`, `state.json`);
* an mlx-lm model directory (`config.json` + `model*.safetensors`), float or quantized.

Loading goes through the trainer's `mlx_qat.train.checkpoint` when it is installed, so
`convert` rebuilds exactly the model the trainer saved. Every failure is a `ConvertError` that
names the path and says what to do.
"""

from __future__ import annotations

import glob
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import yaml

from .errors import ConvertError

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step_(\d+)$")  # complete checkpoints only: no ".tmp-<pid>" suffix
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
        qat: qat.json of a checkpoint (`qat_config`, `fake_quant`, `phase`).
        state: state.json of a checkpoint (`step`, `tokens_seen`, ...).
    """

    kind: str
    path: Path
    config: dict
    run_dir: Path | None = None
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
        d = self.qat.get("qat_config")
        if not d:
            return None
        from ..config import QATConfig

        try:
            return QATConfig.from_dict(d)
        except (TypeError, ValueError) as e:
            raise ConvertError(f"{self.path / 'qat.json'}: invalid qat_config ({e})") from e

    @property
    def trained_with_qat(self) -> bool:
        """True when the last forward of this checkpoint used fake quantization."""
        return bool(self.qat_config) and bool(self.qat.get("fake_quant", False))

    @property
    def tokenizer_dir(self) -> Path | None:
        """The run's sentencepiece tokenizer directory, if there is one."""
        if self.run_dir is not None and (self.run_dir / "tokenizer").is_dir():
            return self.run_dir / "tokenizer"
        return None

    def describe(self) -> str:
        if self.kind == "checkpoint":
            where = self.run_dir if self.run_dir is not None else self.path
            return f"{where} (step {self.step}, phase {self.qat.get('phase', '?')})"
        return f"{self.path} ({'quantized' if self.quantized else 'float'} mlx-lm model)"


def read_json(path: Path, what: str) -> dict:
    """Parse a JSON file, raising `ConvertError` that names it when missing or corrupt."""
    try:
        with open(path, encoding="utf-8") as f:
            out = json.load(f)
    except FileNotFoundError as e:
        raise ConvertError(f"{path}: missing {what}; {_INPUTS}") from e
    except (OSError, ValueError) as e:
        raise ConvertError(f"{path}: cannot read {what} ({e}); the file is corrupt") from e
    if not isinstance(out, dict):
        raise ConvertError(f"{path}: {what} must be a JSON object, got {type(out).__name__}")
    return out


def latest_checkpoint(run_dir: Path) -> Path:
    """The complete checkpoint of `run_dir` with the highest step (ConvertError if none)."""
    try:
        from ..train.checkpoint import latest_checkpoint as _latest
    except ImportError:
        _latest = None
    if _latest is not None:
        found = _latest(run_dir)
    else:
        steps = [
            (int(m.group(1)), p)
            for p in (run_dir / CHECKPOINTS).iterdir()
            if p.is_dir() and (m := _STEP_DIR.match(p.name))
        ]
        found = max(steps)[1] if steps else None
    if found is None:
        raise ConvertError(
            f"{run_dir}: the run has no complete checkpoint in {CHECKPOINTS}/; train longer "
            "(until a checkpoint is saved) or pass a checkpoint directory"
        )
    return Path(found)


def resolve_source(path: str | Path) -> Source:
    """Find out what `path` is and read its metadata (no weights are loaded yet)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ConvertError(f"{path}: no such file or directory; {_INPUTS}")
    if not path.is_dir():
        raise ConvertError(f"{path}: not a directory; {_INPUTS}")
    if (path / CHECKPOINTS).is_dir():
        return _checkpoint(latest_checkpoint(path), run_dir=path)
    if (path / "qat.json").exists() or (path / "state.json").exists():
        parent = path.parent
        run_dir = parent.parent if parent.name == CHECKPOINTS else None
        return _checkpoint(path, run_dir)
    if (path / "config.json").exists():
        config = read_json(path / "config.json", "mlx-lm model config")
        if not glob.glob(str(path / "model*.safetensors")):
            raise ConvertError(f"{path}: config.json but no model*.safetensors; {_INPUTS}")
        return Source("mlx", path, config)
    raise ConvertError(f"{path}: not a run, checkpoint or model directory; {_INPUTS}")


def _checkpoint(path: Path, run_dir: Path | None) -> Source:
    for name in ("model.safetensors", "config.json", "qat.json"):
        if not (path / name).exists():
            raise ConvertError(
                f"checkpoint {path}: missing {name}; it is incomplete or not a checkpoint. "
                "Pass a complete checkpoint directory (or the run directory for the latest one)"
            )
    config = read_json(path / "config.json", "model config")
    if "model_type" not in config:
        raise ConvertError(f"{path / 'config.json'}: no 'model_type'; not an mlx-lm model config")
    qat = read_json(path / "qat.json", "QAT state")
    state = (
        read_json(path / "state.json", "training state") if (path / "state.json").exists() else {}
    )
    return Source("checkpoint", path, config, run_dir, qat, state)


def load_checkpoint_model(source: Source) -> nn.Module:
    """The model as the trainer saved it: prepared (QAT layers), weights loaded, fake quant set."""
    try:
        from ..train.checkpoint import CheckpointError, build_model
    except ImportError:
        return _build_model(source)
    try:
        return build_model(source.path)
    except CheckpointError as e:
        raise ConvertError(f"checkpoint {source.path}: {e}") from e


def _model_from_config(config: dict, where: Path) -> nn.Module:
    from mlx_lm.utils import _get_classes

    try:
        model_class, args_class = _get_classes(config)
        return model_class(args_class.from_dict(config))
    except (ValueError, TypeError, KeyError) as e:
        raise ConvertError(f"{where / 'config.json'}: cannot build the model ({e})") from e


def _load_safetensors(file: Path) -> dict[str, mx.array]:
    try:
        return mx.load(str(file))
    except (RuntimeError, ValueError, OSError) as e:
        raise ConvertError(
            f"{file}: cannot read the weights ({e}); the file is corrupt or truncated. "
            "Convert another checkpoint (pass its directory) or re-save it"
        ) from e


def _build_model(source: Source) -> nn.Module:
    # Fallback while mlx_qat.train.checkpoint is absent: the same steps as its build_model.
    from ..patch import prepare, set_fake_quant

    model = _model_from_config(source.config, source.path)
    qcfg = source.qat_config
    if qcfg is not None:
        prepare(model, qcfg, enabled=bool(source.qat.get("fake_quant", False)))
    weights = _load_safetensors(source.path / "model.safetensors")
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        raise ConvertError(
            f"checkpoint {source.path}: model.safetensors does not match config.json/qat.json "
            f"({e}); the checkpoint is corrupt or from another model"
        ) from e
    if qcfg is not None:
        set_fake_quant(model, bool(source.qat.get("fake_quant", False)))
    mx.eval(model.parameters())
    model.eval()
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


def run_eval_setup(run_dir: Path | None) -> EvalSetup:
    """Validation settings from a run's resolved `config.yaml` (the trainer's flat keys)."""
    if run_dir is None or not (run_dir / "config.yaml").is_file():
        return EvalSetup(None, missing="no run config.yaml")
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConvertError(f"{run_dir / 'config.yaml'}: cannot read the run config ({e})") from e
    out = EvalSetup(None)
    out.seq_len = int(cfg.get("seq_len") or out.seq_len)
    out.batch_size = int(cfg.get("batch_size") or out.batch_size)
    out.eval_batches = int(cfg.get("eval_batches") or out.eval_batches)
    data = cfg.get("data")
    inputs = [data] if isinstance(data, str) else list(data or [])
    if len(inputs) == 1:
        # Relative paths were relative to the training's working directory; try the run's
        # parent too, for a run that was moved together with its data.
        for base in (Path.cwd(), run_dir.parent, run_dir):
            p = base / Path(inputs[0]).expanduser()
            if (p / "manifest.json").is_file() or (p / "latest.json").is_file():
                out.data_dir = p
                return out
    out.missing = f"the run's data {inputs or '(default corpus)'} is not a prepared data dir here"
    return out
