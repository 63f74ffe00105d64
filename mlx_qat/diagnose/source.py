"""What `diagnose` looks at: the float model (a run's checkpoint or an mlx-lm model dir), the
target format per layer, and the validation batches."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from ..checkpoint import build_model, qat_config_of
from ..data.resolve import open_eval_data
from ..eval import check_vocabulary
from ..model_source import ModelSource, load_float, resolve_model
from ..prepare import prepare, qat_layers
from ..qat_config import QATConfig, quantization_map
from ..quant.spec import AFFINE_GROUP_SIZES, FP_MODES, QuantSpec

logger = logging.getLogger(__name__)

SHOWN = 4  # layer names in a message


@dataclass
class Source:
    """A loaded model with what the diagnosis needs to know about it."""

    model: nn.Module
    kind: str  # "checkpoint" | "mlx-lm"
    path: Path
    config: QATConfig  # the target format's rules
    run_config: object | None = None  # the run's TrainConfig, for a checkpoint
    data: str | None = None
    step: int | None = None
    phase: str | None = None
    checkpoint: object | None = None  # the loaded `Checkpoint`


def target_config(
    base: QATConfig | None,
    bits: int | None = None,
    group_size: int | None = None,
    mode: str | None = None,
    embed_bits: int | None = None,
) -> QATConfig:
    """The rules that give each layer its target format: with nothing given, `base` (a
    checkpoint's own `QATConfig`); else the trainer's rule, weights at `mode`/`bits`/
    `group_size` (unspecified ones from `base`'s weights, else affine 4-bit g64), embeddings/head
    at max(bits, 4) or `embed_bits`, `base`'s overrides and scale dtype kept."""
    if base is not None and bits is None and group_size is None and mode is None:
        if embed_bits is None:
            return replace(base, quantizer="minmax")
    w0 = base.weights if base is not None else QuantSpec()
    mode = mode or w0.mode
    if mode in FP_MODES:
        spec = QuantSpec.for_mode(mode, bits, group_size)
    else:
        b = bits if bits is not None else (w0.bits if w0.is_affine else 4)
        g = group_size if group_size is not None else (w0.group_size if w0.is_affine else 64)
        spec = QuantSpec("affine", b, g)
    if embed_bits is None:
        embeddings, floor = None, 4
    elif embed_bits == spec.bits:
        embeddings, floor = spec, None
    else:
        gs = spec.group_size if spec.is_affine else 32
        embeddings, floor = QuantSpec("affine", embed_bits, gs), None
    keep = base if base is not None else QATConfig()
    return replace(
        keep, weights=spec, embeddings=embeddings, embeddings_min_bits=floor, quantizer="minmax"
    )


def load_source(
    path: str | Path,
    bits: int | None = None,
    group_size: int | None = None,
    mode: str | None = None,
    embed_bits: int | None = None,
    revision: str | None = None,
) -> Source:
    """Load the float model at `path` (`model_source.resolve_model`) and the target's rules."""
    source = resolve_model(path, revision)
    if source.kind == "checkpoint":
        return _from_checkpoint(source, bits, group_size, mode, embed_bits)
    if source.kind != "mlx":
        raise ValueError(f"{path}: a GGUF file; import it first (mlx_qat.convert FILE.gguf)")
    if source.quantized:
        raise ValueError(
            f"{path}: the model is already quantized; diagnose needs the float model (e.g. "
            "the Hugging Face weights converted without -q)"
        )
    model, _ = load_float(source)
    config = target_config(None, bits, group_size, mode, embed_bits)
    check_group_sizes(model, config)
    prepare(model, config, enabled=False)
    mx.eval(model.parameters())
    model.eval()
    return Source(model=model, kind="mlx-lm", path=source.path, config=config)


def _from_checkpoint(source: ModelSource, bits, group_size, mode, embed_bits) -> Source:
    from ..train.config import load_config

    ckpt = source.checkpoint
    run_dir = ckpt.path.parent.parent
    cfg = load_config(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else None
    model = build_model(ckpt)
    base = qat_config_of(ckpt)
    check_group_sizes(model, target_config(base, bits, group_size, mode, embed_bits))
    if base is None:  # never prepared: the trainer's rule at the target format
        base_rules = target_config(None, bits, group_size, mode, embed_bits)
        prepare(model, base_rules, enabled=False)
    phase = ckpt.qat.get("phase")
    # An FP twin / ablation run is in its "QAT phase" with fake quant off: a float model.
    if phase == "qat" and ckpt.qat.get("fake_quant", True):
        logger.warning(
            "%s: a QAT-phase checkpoint; diagnosing its latent float weights (the FP-phase "
            "checkpoint before the switch is the float model PTQ would start from)",
            ckpt.path,
        )
    shards = (ckpt.state.get("data") or {}).get("shards")
    data = shards if shards and Path(shards).is_dir() else (cfg.data if cfg else None)
    if isinstance(data, list):
        data = data[0] if data else None
    return Source(
        model=model,
        kind="checkpoint",
        path=ckpt.path,
        config=target_config(base, bits, group_size, mode, embed_bits),
        run_config=cfg,
        data=data,
        step=ckpt.step,
        phase=phase,
        checkpoint=ckpt,
    )


def check_group_sizes(model: nn.Module, config: QATConfig) -> None:
    """Raise ValueError when the target group size does not divide the input width of a layer
    the rules quantize, naming the layers and the group sizes that would fit.

    Such a layer would stay in float and the diagnosis be about the rest (`--group-size 128` on
    a width-64 model quantized 2 of 15 layers and said "PTQ is fine"). Layers the rules leave
    in float (overrides, quant_predicate) are a choice, reported as skipped.
    """
    modules = dict(model.named_modules())
    widths: list[int] = []
    misfit: dict[str, int] = {}  # layer path (block index as *) -> input width
    sizes: set[int] = set()
    affine = True
    for path in quantization_map(model):
        m = modules[path]
        spec, _ = config.resolve(path, m, model)
        if spec is None or "weight" not in m:
            continue
        width = int(m["weight"].shape[-1])
        widths.append(width)
        if width % spec.group_size:
            misfit[re.sub(r"\.\d+\.", ".*.", path)] = width
            sizes.add(spec.group_size)
            affine = affine and spec.is_affine
    if not misfit:
        return
    count = sum(1 for p in quantization_map(model) if re.sub(r"\.\d+\.", ".*.", p) in misfit)
    names = list(misfit)
    shown = ", ".join(names[:SHOWN]) + (
        f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    )
    width = "/".join(map(str, sorted(set(misfit.values()))))
    fit = [g for g in AFFINE_GROUP_SIZES if all(w % g == 0 for w in widths)]
    if fit:
        fix = f"group sizes that divide every layer: {', '.join(map(str, fit))} (pass --group-size {max(fit)}"
        fix += ")" if affine else " --mode affine)"
    else:
        fix = f"none of MLX's group sizes ({', '.join(map(str, AFFINE_GROUP_SIZES))}) divides every layer"
    raise ValueError(
        f"group size {'/'.join(map(str, sorted(sizes)))} does not divide the input width "
        f"({width}) of {count} of the {len(widths)} layers the target format quantizes "
        f"({shown}): they would stay in float and the verdict would not be about this format; "
        f"{fix}"
    )


def target_layers(src: Source) -> tuple[dict[str, tuple[nn.Module, QuantSpec]], list[dict]]:
    """({path: (layer, spec)} at the target format, [{path, reason}] of the layers left out)."""
    covered, skipped = {}, []
    for path, layer in qat_layers(src.model):
        spec, reason = src.config.resolve(path, layer, src.model)
        if spec is None:
            skipped.append({"path": path, "reason": reason})
        elif layer["weight"].shape[-1] % spec.group_size:
            why = f"last dim {layer['weight'].shape[-1]} not a multiple of {spec.group_size}"
            skipped.append({"path": path, "reason": why})
        else:
            covered[path] = (layer, spec)
    return covered, skipped


def open_batches(src: Source, data, eval_batches: int, batch_size, seq_len):
    """(bundle, fixed validation batches, bytes per token) for the source's model."""
    data = data or src.data
    if not data:
        raise ValueError(
            f"{src.path}: no data recorded; pass --data with prepared data (an mlx_qat.data "
            "output dir tokenized with the model's tokenizer)"
        )
    rc = src.run_config
    seq = seq_len if seq_len is not None else (rc.seq_len if rc else 256)
    bs = batch_size if batch_size is not None else (rc.batch_size if rc else 8)
    bundle, batches, bpt = open_eval_data(data, bs, seq, eval_batches or None)
    if src.checkpoint is not None:
        check_vocabulary(src.checkpoint, bundle)
    vocab = model_config(src.model).get("vocab_size")
    if vocab and bundle.vocab_size > vocab:
        raise ValueError(
            f"data {bundle.path}: vocabulary {bundle.vocab_size} is larger than the model's "
            f"({vocab}); pass --data tokenized with the model's tokenizer"
        )
    return bundle, batches, bpt


def model_config(model: nn.Module) -> dict:
    """The model's mlx-lm arguments as a dict (sizes for the memory estimate)."""
    args = getattr(model, "args", None)
    return dict(vars(args)) if args is not None else {}
