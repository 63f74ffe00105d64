"""Where a model comes from: one resolver (`resolve_model`) and one float-model loader
(`load_float`) for every verb and the trainer.

A user string is resolved once into a `ModelSource` of one kind: "checkpoint" (a run
directory's latest complete checkpoint, or one checkpoint directory), "mlx" (an mlx-lm model
directory, float or quantized, or a Hugging Face repo id's snapshot) or "gguf" (a file named
`*.gguf` or starting with the GGUF magic). A local path always wins over a hub id; a repo id is
resolved as mlx-lm resolves it (`mlxlm_compat.hub_snapshot`: the local cache first, then a
download, at `revision`); offline and not cached, the error says so and how to fetch it.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from .checkpoint import (
    CHECKPOINTS,
    STATE_FILE,
    Checkpoint,
    latest_checkpoint,
    load_checkpoint,
    qat_config_of,
)
from .data.tokenizer_dir import has_tokenizer, tokenizer_sha256
from .models.build import load_pretrained, model_dir_sha256, read_model_config
from .models.presets import model_from_config
from .prepare import is_quantizer_param

logger = logging.getLogger(__name__)

INPUTS = (
    "pass a training run directory (with checkpoints/), one checkpoint directory "
    "(checkpoints/step_XXXXXXXX), an mlx-lm model directory (config.json + "
    "model*.safetensors), a .gguf file or a Hugging Face repo id (org/name)"
)
GGUF_MAGIC = b"GGUF"
# What huggingface_hub accepts as a repo id: `name` or `org/name`, no path syntax.
HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


class SourceError(ValueError):
    """A model source that cannot be resolved or loaded; the message names it and the fix."""


@dataclass(eq=False)
class ModelSource:
    """A resolved model source: `name` as the user gave it, its `kind`, the `path`
    actually read, the run holding a checkpoint, and the hub repo id and revision of a
    snapshot."""

    name: str
    kind: str
    path: Path
    run_dir: Path | None = None
    hub: str | None = None
    revision: str | None = None
    _config: dict | None = field(default=None, repr=False)

    @cached_property
    def checkpoint(self) -> Checkpoint | None:  # read once
        return load_checkpoint(self.path, optimizer=False) if self.kind == "checkpoint" else None

    @property
    def config(self) -> dict:
        """The model's config.json dict (a checkpoint's model config); {} for a GGUF file."""
        if self._config is None and self.kind == "checkpoint":
            self._config = self.checkpoint.model_config
        elif self._config is None:
            self._config = read_model_config(self.path, "model") if self.kind == "mlx" else {}
        return self._config

    @property
    def qat(self) -> dict:
        return self.checkpoint.qat if self.checkpoint is not None else {}

    @property
    def state(self) -> dict:
        return self.checkpoint.state if self.checkpoint is not None else {}

    @property
    def step(self) -> int | None:
        return self.state.get("step")

    @property
    def quantized(self) -> bool:
        return "quantization" in self.config or "quantization_config" in self.config

    @property
    def qat_config(self):  # None for a model that was never prepared
        return qat_config_of(self.checkpoint) if self.checkpoint is not None else None

    @property
    def trained_with_qat(self) -> bool:  # its last forward used fake quantization
        return self.qat_config is not None and bool(self.qat.get("fake_quant", False))

    @property
    def vocab_size(self) -> int | None:  # from config.json (or its text_config)
        text = self.config.get("text_config")
        n = self.config.get("vocab_size") or (text or {}).get("vocab_size")
        return int(n) if n else None

    @property
    def tokenizer_dir(self) -> Path | None:  # a run's `tokenizer/`, or the model directory
        if self.kind == "checkpoint":
            tok = self.run_dir / "tokenizer" if self.run_dir is not None else None
            return tok if tok is not None and tok.is_dir() else None
        return self.path if self.kind == "mlx" else None

    def recorded_tokenizer(self) -> tuple[str, str] | None:
        """(sha256, where recorded) of the tokenizer a checkpoint's data was encoded with:
        state.json's `tokenizer_sha256`, else the manifest of its shards (`data.shards`) when
        they are still there; None when neither is."""
        data = self.state.get("data")
        data = data if isinstance(data, dict) else {}
        for recorded in (self.state, data):
            if recorded.get("tokenizer_sha256"):
                return str(recorded["tokenizer_sha256"]), str(self.path / STATE_FILE)
        manifest = Path(str(data.get("shards", ""))) / "manifest.json"
        if data.get("shards") and manifest.is_file():
            sha = (_read_json(manifest).get("tokenizer") or {}).get("sha256")
            if sha:
                return str(sha), str(manifest)
        return None

    def tokenizer_identity(self) -> tuple[str, str] | None:
        """(tokenizer sha256, where it comes from): what a checkpoint records, else the
        tokenizer files beside the model (a run's `tokenizer/`, an mlx-lm or hub folder's own
        files); None when there is none to read."""
        recorded = self.recorded_tokenizer()
        if recorded is not None:
            return recorded
        tok = self.tokenizer_dir
        if tok is not None and has_tokenizer(tok):
            return tokenizer_sha256(tok), f"the tokenizer files in {tok}"
        return None

    def sha256(self) -> str:
        """Content hash of an mlx-lm folder (`models.build.model_dir_sha256`)."""
        return model_dir_sha256(self.path)

    def describe(self) -> str:
        if self.kind == "checkpoint":
            where = self.run_dir if self.run_dir is not None else self.path
            return f"{where} (step {self.step}, phase {self.qat.get('phase', '?')})"
        if self.kind == "gguf":
            return f"{self.path} (GGUF file)"
        what = f"{'quantized' if self.quantized else 'float'} mlx-lm model"
        if self.hub:
            at = f"@{self.revision}" if self.revision else ""
            return f"{self.hub}{at} ({what}, {self.path})"
        return f"{self.path} ({what})"


def is_gguf(path: Path) -> bool:
    """A file named `*.gguf` or starting with the GGUF magic bytes."""
    if not path.is_file():
        return False
    if path.suffix.lower() == ".gguf":
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def is_checkpoint_dir(path: Path) -> bool:
    """A run directory or one of its checkpoint directories."""
    return (path / CHECKPOINTS).is_dir() or any(
        (path / f).exists() for f in ("qat.json", STATE_FILE, "optimizer.safetensors")
    )


def resolve_model(
    name: str | Path, revision: str | None = None, what: str = "the input"
) -> ModelSource:
    """Find out what `name` is (reading nothing heavy; a hub id is fetched if not cached).
    `what` names the input in messages ("--teacher"); SourceError names it and what to pass."""
    text = str(name)
    path = Path(text).expanduser()
    if path.exists():
        if is_gguf(path):
            return ModelSource(text, "gguf", path)
        if not path.is_dir():
            raise SourceError(f"{what} {path}: not a directory; {INPUTS}")
        if is_checkpoint_dir(path):
            return _checkpoint_source(text, path)
        if (path / "config.json").is_file():
            return _mlx_source(text, path, what)
        raise SourceError(f"{what} {path}: not a run, checkpoint or model directory; {INPUTS}")
    if not HUB_ID.match(text) or text.lower().endswith(".gguf"):
        raise SourceError(f"{what} {path}: no such file or directory; {INPUTS}")
    return _mlx_source(text, _hub_path(text, revision, what), what, hub=text, revision=revision)


def float_model_dir(name: str, revision: str | None = None, what: str = "--model") -> str:
    """The local folder of a float mlx-lm model given as a folder (returned as given) or a
    Hugging Face repo id (its snapshot, at `revision`); SourceError for another kind."""
    source = resolve_model(name, revision, what)
    if source.kind != "mlx":
        raise SourceError(
            f"{what} {name}: a {source.kind}, not an mlx-lm model; give a float mlx-lm "
            "model directory or a Hugging Face repo id"
        )
    if source.hub is None:
        return str(name)
    logger.info("%s %s: %s", what, source.hub, source.path)
    return str(source.path)


def _checkpoint_source(name: str, path: Path) -> ModelSource:
    if (path / CHECKPOINTS).is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise SourceError(f"run {path}: no complete checkpoint in {CHECKPOINTS}/")
        path = latest
    run_dir = path.parent.parent if path.parent.name == CHECKPOINTS else None
    return ModelSource(name, "checkpoint", path, run_dir)


def _mlx_source(name: str, path: Path, what: str, **hub) -> ModelSource:
    if not (path / "config.json").is_file():
        raise SourceError(f"{what} {name}: no config.json in {path}; {INPUTS}")
    if not list(path.glob("model*.safetensors")):
        raise SourceError(f"{path}: config.json but no model*.safetensors; {INPUTS}")
    return ModelSource(name, "mlx", path, **hub)


def _hub_path(repo: str, revision: str | None, what: str) -> Path:
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    from .mlxlm_compat import hub_snapshot

    at = f" (revision {revision})" if revision else ""
    try:
        return hub_snapshot(repo, revision)
    except LocalEntryNotFoundError:
        fetch = f"huggingface-cli download {repo}" + (f" --revision {revision}" if revision else "")
        raise SourceError(
            f"{what} {repo}: no such local path, and as a Hugging Face repo id{at} it is not in "
            f"the local cache and cannot be downloaded (offline: HF_HUB_OFFLINE is set or there "
            f"is no network). Fetch it once online (`{fetch}`, or run this command online), or "
            "pass a local model directory"
        ) from None
    except HFValidationError as e:
        raise SourceError(f"{what} {repo}: no such file or directory ({e}); {INPUTS}") from None
    except OSError as e:  # huggingface_hub's HTTP errors: no such repo, revision, access
        raise SourceError(
            f"{what} {repo}: no such local path, and the Hugging Face hub cannot give it{at} "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else e}); check the "
            "repo id and revision, or log in (`huggingface-cli login`) for a gated model"
        ) from None


def load_float(
    source: ModelSource,
    dtype: str | None = None,
    frozen: bool = False,
    allow_quantized: bool = False,
    vocab_size: int | None = None,
    what: str = "the input",
) -> tuple[nn.Module, dict]:
    """(float mlx-lm model, its config dict) of `source`: an mlx-lm folder through mlx-lm's own
    loader, or a checkpoint's float weights (quantizer parameters dropped).

    Args:
        dtype: cast every floating parameter to it (e.g. "bfloat16"); None keeps them.
        frozen: freeze and set eval mode (a teacher or a reference).
        allow_quantized: accept an already quantized mlx-lm folder (else SourceError).
        vocab_size: refuse a model with fewer embedding rows than these token ids need.
    """
    if source.kind == "checkpoint":
        ckpt = source.checkpoint
        weights = {k: v for k, v in ckpt.weights.items() if not is_quantizer_param(k)}
        return build_float(ckpt.model_config, weights, dtype, frozen), ckpt.model_config
    if source.kind != "mlx":
        raise SourceError(f"{what} {source.path}: a {source.kind} file; {INPUTS}")
    model, config = load_pretrained(source.path, source.config, vocab_size, what, allow_quantized)
    return freeze(model, dtype, frozen), config


def build_float(
    model_config: dict, weights: dict[str, mx.array], dtype: str | None = None, frozen=True
) -> nn.Module:
    """A plain mlx-lm model of `model_config` holding copies of `weights` (cast to `dtype`)."""
    model = model_from_config(model_config)
    # New arrays: the compiled step refuses a captured array that is also one of its inputs
    # (the student's weights at the switch), and the student's next update must not reach it.
    model.load_weights([(k, mx.array(v)) for k, v in weights.items()], strict=True)
    return freeze(model, dtype, frozen)


def freeze(model: nn.Module, dtype: str | None = None, frozen: bool = True) -> nn.Module:
    """`model` cast to `dtype` (None: as it is), frozen in eval mode when `frozen`, evaluated."""
    if dtype is not None:
        model.set_dtype(getattr(mx, dtype))
    if frozen:
        model.freeze()
        model.eval()
    mx.eval(model.parameters())
    return model


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            out = json.load(f)
    except (OSError, ValueError) as e:
        raise SourceError(f"{path}: cannot read it ({e}); the file is corrupt") from e
    if not isinstance(out, dict):
        raise SourceError(f"{path}: must be a JSON object, got {type(out).__name__}")
    return out
