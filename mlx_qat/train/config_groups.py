"""The groups of `TrainConfig` where a run lives and how it is run (run, model, data, logging,
execution; the recipe's groups are in `config_recipe.py`), the helpers every group is made
with, and the parsers of counts ("3M") and the QAT fraction.

A group is a dataclass made by `@group(key, title)`: its fields' metadata carry `group` = `key`
(the `--help` section), and `check(self)` validates and normalizes its fields in place. Every
check runs at the boundary, before data is prepared or anything is written, and every error
names the field, the problem and the fix.
"""

from __future__ import annotations

import math
import os
from dataclasses import MISSING, dataclass, field, fields
from types import MappingProxyType
from typing import Any

from ..data.tokenizer import DEFAULT_VOCAB_SIZE
from ..models.presets import preset_config

MASTER_DTYPES = ("float32", "model")
_SUFFIX = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}


def parse_count(value: Any, name: str = "value") -> int:
    """A whole count written as 3000000, "3_000_000", "3e6" or "3M" (k, M, B suffixes)."""
    if isinstance(value, bool):
        raise ValueError(f"{name}={value!r}: give a whole number such as 3000000, 3e6 or 3M")
    if isinstance(value, int):
        return value
    text = str(value).strip().replace("_", "")
    scale = _SUFFIX.get(text[-1:].lower(), 1.0)
    try:
        x = float(text[:-1] if scale != 1.0 else text) * scale
    except ValueError:
        raise ValueError(
            f"{name}={value!r}: give a whole number such as 3000000, 3e6 or 3M"
        ) from None
    if not math.isfinite(x) or x != round(x):
        raise ValueError(f"{name}={value!r}: must be a whole number of tokens")
    return int(round(x))


def normalize_fraction(value: Any) -> str | float:
    """'auto' or a float in [0, 1]; raise ValueError otherwise."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"qat_fraction={value!r}: give a number in [0, 1] or 'auto'") from None
    if not (0.0 <= f <= 1.0) or math.isnan(f):
        raise ValueError(f"qat_fraction={value!r}: must be in [0, 1] (or 'auto')")
    return f


def setting(default: Any, help: str, **kw: Any) -> Any:
    """A field with its `--help` text and argparse extras (`nargs`, `choices`, ...)."""
    meta = {"help": help, **kw}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def group(key: str, title: str):
    """Class decorator: a dataclass whose fields belong to the `--help` section `key`."""

    def wrap(cls):
        cls = dataclass(cls)
        for f in fields(cls):
            f.metadata = MappingProxyType({**f.metadata, "group": key})
        cls.KEY, cls.TITLE = key, title
        return cls

    return wrap


def need(cfg, ok: bool, name: str, rule: str) -> None:
    """Raise `name=value: must be rule` unless `ok`."""
    if not ok:
        raise ValueError(f"{name}={getattr(cfg, name)!r}: must be {rule}")


def check_choices(cfg, group_cls) -> None:
    """Every field of `group_cls` with `choices` holds one of them (or None, its default)."""
    for f in fields(group_cls):
        allowed, value = f.metadata.get("choices"), getattr(cfg, f.name)
        if allowed and value not in allowed and not (value is None and f.default is None):
            unset = f" (or leave it out: {f.metadata['unset']})" if "unset" in f.metadata else ""
            raise ValueError(f"{f.name}={value!r}: choose one of {', '.join(allowed)}{unset}")


def normpath(cfg, *names: str) -> None:
    """One spelling per path: `runs/a/` and `runs/a` are the same run."""
    for name in names:
        if getattr(cfg, name):
            setattr(cfg, name, os.path.normpath(getattr(cfg, name)))


def default_of(f) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


@group("run", "run directory, resume and seed")
class RunSettings:
    out: str = setting("runs/main", "run directory (config, metrics, checkpoints, tokenizer)")
    resume: bool = setting(False, "continue from the run directory's latest checkpoint")
    branch_from: str | None = setting(
        None,
        "start from another run's checkpoint directory (weights, optimizer, step); the "
        "schedule up to that step must be this run's, and --out new or without checkpoints "
        "(or --overwrite)",
    )
    overwrite: bool = setting(
        False,
        "start afresh in an --out that already holds a run: its checkpoints, metrics, "
        "tokenizer and fp_twin are deleted first (never other files: --out with files that are "
        "not a run's is refused)",
    )
    reschedule: bool = setting(
        False,
        "with --resume: continue although lr, min_lr, warmup or grad_clip changed (e.g. after "
        "a divergence); the new values apply from the resumed step on",
    )
    seed: int = setting(0, "seed of the model init and the data order")

    def check(self) -> None:
        if self.resume and self.branch_from:
            raise ValueError("resume and branch_from: give one (resume continues this run)")
        if self.overwrite and self.resume:
            raise ValueError("overwrite and resume: give one (overwrite deletes the run)")
        if self.reschedule and not self.resume:
            raise ValueError("reschedule: only with resume (it accepts a changed schedule)")
        need(self, 0 <= self.seed < 2**63, "seed", "in [0, 2**63)")
        normpath(self, "out", "branch_from")


@group("model", "model (what is trained)")
class ModelSettings:
    preset: str = setting("d2", "Llama preset: d<depth> (d2, d4, ...; see mlx_qat.models)")
    model_config: str | None = setting(
        None, "config.json of any mlx-lm model (random init); overrides --preset"
    )
    model: str | None = setting(
        None,
        "existing float mlx-lm model dir or Hugging Face repo id (org/name, the local cache "
        "first) to QAT-fine-tune; overrides --preset. Its own "
        "tokenizer encodes raw --data, and prepared data of another tokenizer is refused. "
        "Fine-tuning defaults (any of them given wins): --lr 1e-4, --qat-fraction 1, "
        "--weight-decay 0, --quantizer-lr-scale 1, --scale-grad fixed_codes with --quantizer "
        "learned_affine, --kd-temperature 2 with --objective kd/mix",
    )
    revision: str | None = setting(
        None, "hub revision (branch, tag or commit) of a --model repo id"
    )
    master_dtype: str = setting(
        "float32",
        "--model: dtype of the trained (latent) weights and their optimizer state: float32 "
        "(an update of 1e-5 to a bfloat16 weight of 0.02 would round away) or model (the "
        "model's own dtype: half the memory of a 16-bit model's weights). The teacher stays in "
        "the model's dtype, and so do the exported scales unless --scale-dtype says otherwise",
        choices=MASTER_DTYPES,
    )

    def check(self) -> None:
        check_choices(self, ModelSettings)
        if not (self.model or self.model_config):
            preset_config(self.preset, 1)  # a bad preset name fails here, before the data
        normpath(self, "model_config", "model")


@group("data", "data and batch shape")
class DataSettings:
    data: list[str] | None = setting(
        None,
        "prepared data dir (mlx_qat.data output) or raw text files/folders; default: the "
        "default corpus",
        nargs="+",
    )
    data_out: str | None = setting(
        None,
        "where raw inputs are tokenized (content-addressed; an existing latest.json is never "
        "repointed); default: <out>/data",
    )
    vocab_size: int = setting(
        DEFAULT_VOCAB_SIZE,
        "tokenizer vocabulary when the data is built here (ignored with a --model that has "
        "its own tokenizer)",
    )
    mask_prompt: bool = setting(
        False,
        "train on the completions only (mlx-lm's --mask-prompt): the prompt tokens of "
        "completions/chat records carry no loss in ce, kd and mix (evaluations score every "
        "token); needs data with such records (mlx_qat.data --tokenizer MODEL_DIR)",
    )
    batch_size: int = setting(16, "sequences per micro-batch")
    seq_len: int = setting(128, "tokens per sequence")
    grad_accum: int = setting(1, "micro-batches per optimizer step")

    def check(self) -> None:
        for name in ("batch_size", "seq_len", "grad_accum"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        need(self, self.vocab_size >= 1, "vocab_size", ">= 1")
        if isinstance(self.data, str):
            self.data = [self.data]
        self.data = [os.path.normpath(d) for d in self.data] if self.data else self.data
        normpath(self, "data_out")

    @property
    def tokens_per_step(self) -> int:
        """Tokens consumed by one optimizer step."""
        return self.batch_size * self.seq_len * self.grad_accum


@group("eval", "evaluation, checkpoints and logging")
class LoggingSettings:
    quiet: bool = setting(False, "no progress bar or per-eval lines")
    report_to: str | None = setting(
        None,
        "also report metrics.jsonl's records to an experiment tracker through mlx-lm: wandb "
        "or swanlab (comma-separated for both; pip install wandb / swanlab)",
    )
    project_name: str | None = setting(None, "the tracker's project (with --report-to)")
    plot: bool = setting(False, "draw <out>/loss.png at the end (needs matplotlib)")
    eval_every: int = setting(100, "evaluate every N steps (and at the end); 0: only at the end")
    eval_batches: int = setting(16, "validation batches per evaluation (the same ones each time)")
    final_eval_batches: int = setting(
        0, "validation batches for the final evaluation (0: the whole validation split)"
    )
    save_every: int = setting(500, "checkpoint every N steps (and at the switch and the end)")
    save_steps: list[int] = setting(
        [],
        "also checkpoint after these steps, and keep them (a sweep's trunk saves its branch "
        "points)",
        nargs="*",
    )
    keep_checkpoints: int = setting(2, "keep the last K checkpoints (plus the switch one)")
    log_every: int = setting(1, "write a metrics line every N steps")
    basin_monitor: bool = setting(
        False,
        "QAT phase, at each evaluation: the cosine between the descent direction -g (STE "
        "gradient) and the way back from the quantized weights to the float weights at the "
        "switch (inward_cos, per layer too), and the first step whose QAT loss is within eps "
        "of the FP loss at the switch (basin_reentry); reconstructions of paper B's "
        "definitions (train/basin.py)",
    )

    def check(self) -> None:
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints={self.keep_checkpoints}: must be >= 1")
        if self.eval_batches < 1 or self.final_eval_batches < 0:
            raise ValueError(
                f"eval_batches={self.eval_batches}, final_eval_batches="
                f"{self.final_eval_batches}: need eval_batches >= 1 and final_eval_batches >= 0 "
                "(0 = the whole validation split)"
            )
        need(self, self.log_every >= 1, "log_every", ">= 1 (1: a metrics line every step)")
        need(self, self.save_every >= 0, "save_every", ">= 0 (0: only at the switch and the end)")
        self.save_steps = sorted({int(s) for s in self.save_steps or ()})
        need(self, all(s >= 1 for s in self.save_steps), "save_steps", "steps >= 1")
        need(self, self.eval_every >= 0, "eval_every", ">= 0 (0: only at the end)")


@group("distributed", "execution (compilation, memory, several processes)")
class ExecutionSettings:
    compile: bool = setting(True, "mx.compile the training step")
    cache_limit_mb: int = setting(
        4096, "MLX buffer cache limit in MiB (MLX's CPU default, 32, is slow)"
    )
    dist_timeout: float = setting(
        300.0,
        "several processes (mlx.launch): seconds one training step or exchange may wait for "
        "the others before this process stops, naming a dead or hung rank",
    )

    def check(self) -> None:
        need(self, self.cache_limit_mb >= 0, "cache_limit_mb", ">= 0")
        need(self, self.dist_timeout > 0, "dist_timeout", "> 0 seconds")
