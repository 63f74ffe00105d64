"""Building the model and its `QATConfig` from a `TrainConfig`."""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import replace
from functools import cache
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from ..fileio import sha256_file, sha256_json
from ..qat_config import QATConfig
from ..quant.spec import QuantSpec
from .presets import model_config_dict, model_from_config, preset_config

logger = logging.getLogger(__name__)


def qat_config(config) -> QATConfig:
    """The `QATConfig` of a run: weights at `bits`, embeddings/head at `embed_bits` (default
    max(bits, 4), the compute-optimal QAT recipe), `quant_overrides` ({glob: bits | {bits,
    group_size, mode} | None}) as its `overrides`; ValueError naming the format, or the
    override, that MLX cannot quantize to."""
    kw = {k: getattr(config, k) for k in ("quantizer", "lsq_per", "scale_grad", "scale_dtype")}
    if config.embed_bits is None:
        base = QATConfig.with_bits(config.bits, config.group_size, config.q_mode, 4, **kw)
    else:

        def spec(mode: str, bits: int) -> QuantSpec:
            return QuantSpec.for_mode(mode, bits, config.group_size if mode == "affine" else None)

        weights = spec(config.q_mode, config.bits)
        native = QuantSpec.for_mode(config.q_mode).bits == config.embed_bits
        embeddings = spec(config.q_mode if native else "affine", config.embed_bits)
        base = QATConfig(weights=weights, embeddings=embeddings, **kw)
    overrides = dict(getattr(config, "quant_overrides", None) or {})
    for glob, rule in overrides.items():  # one at a time, so that the error names it
        try:
            replace(base, overrides={glob: rule})
        except (TypeError, ValueError) as e:
            raise ValueError(f"quant_overrides[{glob!r}]={rule!r}: {e}") from None
    return replace(base, overrides=overrides) if overrides else base


def make_model(config, vocab_size: int, model_dir: str | None = None) -> tuple[nn.Module, dict]:
    """(float model, its mlx-lm config.json dict), seeded by `config.seed`, from `--model` (read
    from `model_dir`, its local folder, when given), else `--model-config` (random init), else
    `--preset`."""
    mx.random.seed(config.seed)
    if config.model:
        return load_pretrained(model_dir or config.model, vocab_size=vocab_size)
    cfg = scratch_model_config(config, vocab_size)
    _check_vocab(cfg["vocab_size"], vocab_size, config.model_config or "--preset")
    model = model_from_config(cfg)
    mx.eval(model.parameters())
    return model, model_config_dict(model, cfg)


def scratch_model_config(config, vocab_size: int) -> dict:
    """The mlx-lm config dict of a model trained from scratch: the `--model-config` file
    (ValueError naming it when unreadable or quantized; `vocab_size` defaulting to the data's),
    else `--preset`'s."""
    if not config.model_config:
        return preset_config(config.preset, vocab_size, max(4096, config.seq_len))
    path = Path(config.model_config)
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"--model-config {path}: cannot read it ({e})") from e
    if "quantization" in cfg or "quantization_config" in cfg:
        raise ValueError(
            f"--model-config {path}: describes a quantized model; remove its "
            "'quantization' entry (QAT starts from a float model)"
        )
    cfg.setdefault("vocab_size", vocab_size)
    return cfg


def _check_vocab(model_vocab: int, data_vocab: int, where: str) -> None:
    if int(model_vocab) < int(data_vocab):
        raise ValueError(
            f"{where}: vocab_size {model_vocab} is smaller than the data's tokenizer "
            f"({data_vocab}); tokenize the data with the model's tokenizer or enlarge the vocab"
        )


def model_dir_sha256(path: str | Path) -> str:
    """Content hash of what `--model` loads from `path` (config.json and the safetensors), which
    checkpoints record so that a resume can tell if the folder changed; cached while the
    files' sizes and modification times stay the same."""
    files = sorted([Path(path) / "config.json", *Path(path).glob("*.safetensors")])
    stamp = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _dir_sha256(str(Path(path).resolve()), stamp)


@cache
def _dir_sha256(path: str, stamp: tuple) -> str:
    return sha256_json({name: sha256_file(Path(path) / name) for name, _, _ in stamp})


def read_model_config(path: str | Path, what: str = "--model") -> dict:
    """An mlx-lm folder's config.json as mlx-lm reads it (`mlx_lm.utils.load_config`: with
    generation_config.json's eos_token_id)."""
    from mlx_lm.utils import load_config

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"{what} {path}: no config.json; give an mlx-lm model directory")
    try:
        config = load_config(path)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"{what} {path}: cannot read config.json ({e}); the file is corrupt"
        ) from e
    if not isinstance(config, dict):
        raise ValueError(f"{what} {path}: config.json is not a JSON object")
    return config


def load_pretrained(
    path: str | Path,
    config: dict | None = None,
    vocab_size: int | None = None,
    what: str = "--model",
    allow_quantized: bool = False,
) -> tuple[nn.Module, dict]:
    """(model, its config dict) of the mlx-lm folder `path`, through mlx-lm's own loader with
    `config` (its config.json, read here when None). ValueError for no config.json, an already
    quantized model (unless `allow_quantized`), or fewer embedding rows than `vocab_size`."""
    from ..mlxlm_compat import load_model_with_config

    path = Path(path)
    config = read_model_config(path, what) if config is None else config
    if not allow_quantized and ("quantization" in config or "quantization_config" in config):
        raise ValueError(
            f"{what} {path}: the model is already quantized; QAT needs the float model "
            "(e.g. the original Hugging Face weights converted without -q)"
        )
    if vocab_size is not None:
        _check_vocab(config.get("vocab_size", vocab_size), vocab_size, f"{what} {path}")
    try:
        model = load_model_with_config(path, lambda _: copy.deepcopy(config))
    except (ValueError, RuntimeError, FileNotFoundError, KeyError) as e:
        raise ValueError(f"{what} {path}: mlx-lm cannot load this model ({e})") from e
    mx.eval(model.parameters())
    return model, model_config_dict(model, config)
