"""The plan of a config without training: build the model lazily, size it, plan."""

from __future__ import annotations

import json
from pathlib import Path

from .config import TrainConfig
from .plan import PhasePlan, make_plan


def _vocab_size(cfg: TrainConfig) -> int:
    # Prepared data knows its vocabulary; raw inputs will get a tokenizer of cfg.vocab_size.
    if cfg.data and len(cfg.data) == 1:
        p = Path(cfg.data[0])
        if (p / "manifest.json").is_file():
            return int(json.loads((p / "manifest.json").read_text())["vocab_size"])
        if (p / "latest.json").is_file():
            from ..data import load_bundle

            return load_bundle(p).vocab_size
    return cfg.vocab_size


def plan_for_config(cfg: TrainConfig) -> PhasePlan:
    """`make_plan` for `cfg`'s model (parameters stay lazy: nothing is allocated)."""
    from ..models.presets import model_from_config, preset_config
    from ..models.sizing import parameter_bytes
    from ..patch import prepare
    from .model import qat_config

    vocab = _vocab_size(cfg)
    if cfg.model or cfg.model_config:
        path = Path(cfg.model) / "config.json" if cfg.model else Path(cfg.model_config)
        try:
            mcfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: cannot read the model config ({e})") from e
        mcfg.setdefault("vocab_size", vocab)
    else:
        mcfg = preset_config(cfg.preset, vocab, max(4096, cfg.seq_len))
    model = model_from_config(mcfg)
    prepare(model, qat_config(cfg), enabled=False)
    pb = parameter_bytes(model)
    return make_plan(cfg, pb.n_params, pb.n_params_no_embed, pb.bytes)
