"""`TrainConfig`: every setting of a training run, as plain data.

The command line (`mlx_qat.cli.train`) makes one `--kebab-case` flag per field (`q_mode` is
`--mode`), in the sections of each field's `group` (titled and ordered in `cli.train.GROUPS`)
for `--help`; the YAML file is flat.
The trainer writes the resolved config to `<out>/config.yaml`, and `load_config` reads it back.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..data.tokenizer import DEFAULT_VOCAB_SIZE
from ..quant.learned_affine import SCALE_GRADS
from ..quant.quantizers import QUANTIZERS
from ..quant.spec import MODES as Q_MODES
from .config_checks import (  # noqa: F401  (the allowed values, importable from here)
    GRANULARITIES,
    LR_CONTROLS,
    MASTER_DTYPES,
    OBJECTIVES,
    SWITCH_STATE,
    TEACHER_DTYPES,
    TRAINED,
    normalize_fraction,
    parse_count,
    validate_config,
)
from .defaults import scratch_default
from .overrides import parse_quant_override
from .schedules import COOLDOWN_MODES, PIPELINES
from .schedules import SHAPES as COOLDOWN_SHAPES

# Fields that do not change what is trained: excluded from the config hash.
_NOT_HASHED = {
    "out",
    "resume",
    "branch_from",
    "overwrite",
    "reschedule",
    "data_out",
    "quiet",
    "eval_every",
    "eval_batches",
    "final_eval_batches",
    "save_every",
    "save_steps",
    "keep_checkpoints",
    "log_every",
    "plot",
    "fp_twin",
    "compile",
    "cache_limit_mb",
    "dist_timeout",
    "basin_monitor",  # observes: training is bit-identical with it (tests/test_basin.py)
    "report_to",  # observes too: metrics.jsonl's records, also sent to a tracker (report.py)
    "project_name",
}
# Fields added after runs existed: left out of the hash while at their default, so that those
# runs keep their hash (resume, sweep rows). A default never changes meaning, so this is exact.
_HASHED_WHEN_SET = ("objective", "kd_temperature", "kd_weight", "teacher_dtype", "quant_overrides")
_HASHED_WHEN_SET += ("lr_control", "trs_lambda", "trs_momentum", "trs_granularity", "trs_u0",
                     "trs_eta", "scale_grad", "train", "master_dtype",
                     "weight_lr_scale", "mask_prompt", "revision", "cooldown_mode")  # fmt: skip
# Settings a resumed run may change with `reschedule` (e.g. after a divergence): they shape the
# LR and the update from the resumed step on, not the plan, the model or the data.
SCHEDULE_FIELDS = (
    "lr",
    "min_lr",
    "warmup_tokens",
    "warmup_steps",
    "qat_warmup_fraction",
    "grad_clip",
)
# Fields whose flag is spelt otherwise (one flag name per concept across the verbs): field ->
# flag name. The field keeps its name (config.yaml, the hash of existing runs); `from_dict`
# reads the flag's name as a key too, and the CLI keeps the old flag for one release.
FLAG_NAMES = {"q_mode": "mode"}
# Left out of the hash a resume compares: the data is checked by content instead (the shards'
# key and the tokenizer's sha256 in every checkpoint), so however its path is spelt (`data/`,
# `./data`, absolute, a copied run's) the same data resumes and other data is refused.
DATA_FIELDS = ("data",)


def _f(default: Any, help: str, group: str, **kw: Any) -> Any:
    meta = {"help": help, "group": group, **kw}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """One training run. See `mlx_qat.train --help` for every field.

    Example:
        >>> cfg = TrainConfig(preset="d2", tokens=200_000, bits=4, qat_fraction="auto")
        >>> result = mlx_qat.train.train(cfg)
    """

    # run
    out: str = _f("runs/main", "run directory (config, metrics, checkpoints, tokenizer)", "run")
    resume: bool = _f(False, "continue from the run directory's latest checkpoint", "run")
    branch_from: str | None = _f(
        None,
        "start from another run's checkpoint directory (weights, optimizer, step); the "
        "schedule up to that step must be this run's, and --out new or without checkpoints "
        "(or --overwrite)",
        "run",
    )
    overwrite: bool = _f(
        False,
        "start afresh in an --out that already holds a run: its checkpoints, metrics, "
        "tokenizer and fp_twin are deleted first (never other files: --out with files that are "
        "not a run's is refused)",
        "run",
    )
    reschedule: bool = _f(
        False,
        "with --resume: continue although lr, min_lr, warmup or grad_clip changed (e.g. after "
        "a divergence); the new values apply from the resumed step on",
        "run",
    )
    seed: int = _f(0, "seed of the model init and the data order", "run")
    quiet: bool = _f(False, "no progress bar or per-eval lines", "eval")
    report_to: str | None = _f(
        None,
        "also report metrics.jsonl's records to an experiment tracker through mlx-lm: wandb "
        "or swanlab (comma-separated for both; pip install wandb / swanlab)",
        "eval",
    )
    project_name: str | None = _f(None, "the tracker's project (with --report-to)", "eval")
    plot: bool = _f(False, "draw <out>/loss.png at the end (needs matplotlib)", "eval")
    fp_twin: bool = _f(
        False,
        "after training, rerun the QAT phase from the switch checkpoint with fake quant off "
        "(<out>/fp_twin): the FP model and its PTQ that QAT is compared with",
        "qat",
    )
    ablate_qat: bool = _f(
        False, "run the QAT phase with fake quant off (what --fp-twin trains)", "qat"
    )
    compile: bool = _f(True, "mx.compile the training step", "distributed")
    cache_limit_mb: int = _f(
        4096, "MLX buffer cache limit in MiB (MLX's CPU default, 32, is slow)", "distributed"
    )
    dist_timeout: float = _f(
        300.0,
        "several processes (mlx.launch): seconds one training step or exchange may wait for "
        "the others before this process stops, naming a dead or hung rank",
        "distributed",
    )
    # data
    data: list[str] | None = _f(
        None,
        "prepared data dir (mlx_qat.data output) or raw text files/folders; default: the "
        "default corpus",
        "data",
        nargs="+",
    )
    data_out: str | None = _f(
        None,
        "where raw inputs are tokenized (content-addressed; an existing latest.json is never "
        "repointed); default: <out>/data",
        "data",
    )
    vocab_size: int = _f(
        DEFAULT_VOCAB_SIZE,
        "tokenizer vocabulary when the data is built here (ignored with a --model that has "
        "its own tokenizer)",
        "data",
    )
    mask_prompt: bool = _f(
        False,
        "train on the completions only (mlx-lm's --mask-prompt): the prompt tokens of "
        "completions/chat records carry no loss in ce, kd and mix (evaluations score every "
        "token); needs data with such records (mlx_qat.data --tokenizer MODEL_DIR)",
        "data",
    )
    # model
    preset: str = _f("d2", "Llama preset: d<depth> (d2, d4, ...; see mlx_qat.models)", "model")
    model_config: str | None = _f(
        None, "config.json of any mlx-lm model (random init); overrides --preset", "model"
    )
    model: str | None = _f(
        None,
        "existing float mlx-lm model dir or Hugging Face repo id (org/name, the local cache "
        "first) to QAT-fine-tune; overrides --preset. Its own "
        "tokenizer encodes raw --data, and prepared data of another tokenizer is refused. "
        "Fine-tuning defaults (any of them given wins): --lr 1e-4, --qat-fraction 1, "
        "--weight-decay 0, --quantizer-lr-scale 1, --scale-grad fixed_codes with --quantizer "
        "learned_affine, --kd-temperature 2 with --objective kd/mix",
        "model",
    )
    revision: str | None = _f(
        None, "hub revision (branch, tag or commit) of a --model repo id", "model"
    )
    master_dtype: str = _f(
        "float32",
        "--model: dtype of the trained (latent) weights and their optimizer state: float32 "
        "(an update of 1e-5 to a bfloat16 weight of 0.02 would round away) or model (the "
        "model's own dtype: half the memory of a 16-bit model's weights). The teacher stays in "
        "the model's dtype, and so do the exported scales unless --scale-dtype says otherwise",
        "model",
        choices=MASTER_DTYPES,
    )
    # qat
    bits: int = _f(4, "weight bits", "qat")
    group_size: int = _f(64, "quantization group size", "qat")
    q_mode: str = _f("affine", "MLX quantization mode", "qat", choices=Q_MODES)
    quantizer: str = _f("minmax", "fake-quant quantizer", "qat", choices=QUANTIZERS)
    lsq_per: str = _f("row", "LSQ step granularity", "qat", choices=("row", "group"))
    scale_grad: str | None = _f(
        None,
        "learned_affine's grid gradient: ste (straight-through) or fixed_codes (DWQ's, codes "
        "held fixed; trains the grid even when the weights hardly move)",
        "qat",
        choices=SCALE_GRADS,
    )
    train: str = _f(
        "all",
        "what the QAT phase trains: all (weights, grid, norms) or grid (the quantization grid "
        "and the norms, every weight frozen; with --scale-grad fixed_codes and --objective kd "
        "this is mlx-lm's DWQ). grid needs QAT from the first step (--qat-fraction 1)",
        "qat",
        choices=TRAINED,
    )
    embed_bits: int | None = _f(None, "embedding/head bits (default: max(bits, 4))", "qat")
    scale_dtype: str | None = _f(None, "scale/bias storage dtype (default: weight dtype)", "qat")
    quant_overrides: dict[str, Any] = _f(
        {},
        "per-path formats, GLOB=SPEC (repeatable): SPEC is bits (lm_head=8), a mode "
        "('*.mlp.*=mxfp4'), float (left unquantized) or {bits: 3, group_size: 32}; module "
        "paths or fnmatch globs, an exact path first, then globs in order; beats --bits and "
        "--embed-bits. YAML: a mapping glob: spec",
        "qat",
        nargs="+",
        action="extend",
        type=parse_quant_override,
        metavar="GLOB=SPEC",
    )
    # distillation (the QAT phase; the FP phase always trains on cross-entropy)
    objective: str = _f(
        "ce",
        "QAT-phase loss: ce (next-token cross-entropy), kd (T^2 KL to the frozen float "
        "teacher: the --model weights, else the run's weights at the switch) or mix "
        "((1-w) ce + w kd)",
        "distill",
        choices=OBJECTIVES,
    )
    kd_temperature: float | None = _f(
        None, "softmax temperature T of kd and mix, in (0, 100]", "distill"
    )
    kd_weight: float = _f(0.5, "mix: weight w of the kd term", "distill")
    teacher_dtype: str | None = _f(
        None,
        "the teacher's weights in this dtype (default: the model's; float16/bfloat16 halve "
        "a float32 teacher's memory)",
        "distill",
        choices=TEACHER_DTYPES,
    )
    # budget
    tokens: int = _f(3_000_000, "total training tokens D (FP + QAT)", "budget")
    qat_fraction: str | None = _f(
        None, "QAT share f of the tokens, or 'auto' = exp(-a / ln S)", "budget"
    )
    auto_a: float = _f(6.7297, "constant a of the auto fraction", "budget")
    # schedule
    pipeline: str = _f("fused", "LR pipeline", "schedule", choices=PIPELINES)
    cooldown_shape: str = _f("1-sqrt", "LR decay shape", "schedule", choices=COOLDOWN_SHAPES)
    cooldown_fraction: float = _f(
        0.2,
        "fused: decay over min(D_qat, c*D); classic: FP cooldown over c*D_fp",
        "schedule",
    )
    cooldown_mode: str = _f(
        "fused",
        "fused pipeline: 'fused' ties the decay to the QAT phase (min(D_qat, c*D)); 'fixed' "
        "decays over the last c*D whatever f (the QAT fraction moves the switch, not the "
        "cooldown); the classic pipeline ignores it",
        "schedule",
        choices=COOLDOWN_MODES,
    )
    warmup_tokens: int | None = _f(
        None, "LR warmup in tokens, instead of --warmup-steps", "schedule"
    )
    warmup_steps: int | None = _f(
        None, "LR warmup in steps (default: min(2% of steps, 500))", "schedule"
    )
    qat_warmup_fraction: float = _f(
        0.01, "classic: QAT re-warmup as a share of the QAT steps", "schedule"
    )
    lr: float | None = _f(None, "peak learning rate", "schedule")
    min_lr: float = _f(0.0, "learning rate at the end of a decay", "schedule")
    optimizer_state_at_switch: str = _f(
        "keep", "AdamW moments at the FP->QAT switch", "optimizer", choices=SWITCH_STATE
    )
    # optimizer
    weight_decay: float | None = _f(None, "AdamW weight decay (matrices only)", "optimizer")
    beta1: float = _f(0.9, "AdamW beta1", "optimizer")
    beta2: float = _f(0.95, "AdamW beta2", "optimizer")
    eps: float = _f(1e-8, "AdamW epsilon", "optimizer")
    grad_clip: float = _f(1.0, "global gradient-norm clip (0: off)", "optimizer")
    # 0.03: learned_affine on the main job recovered 47-53% of the PTQ gap at x0.003-x0.03 and
    # 41% at x0.1 (benchmarks/results/main_job.md); LSQ at x1 diverged at a pretraining LR.
    quantizer_lr_scale: float | None = _f(
        None, "LR multiplier of learnable quantizer parameters (LSQ alpha, scales)", "optimizer"
    )
    weight_lr_scale: float = _f(
        1.0,
        "LR multiplier of the weight matrices (linear layers, embedding); norms and biases stay "
        "at --lr. Below 1 with --quantizer-lr-scale 1, the grid and the norms train at --lr "
        "(as DWQ's do) while the weights move slower; 0 holds them (use --train grid: the same "
        "training without their gradients and moments)",
        "optimizer",
    )
    # transition-rate scheduling (train/trs.py; paper 001)
    lr_control: str = _f(
        "schedule",
        "QAT phase: quantized weights at the scheduled LR, or at TRS's transition-adaptive LR "
        "U <- max(0, U + eta (R - K)) steering the EMA K of the code-change rate to a cosine "
        "target R (their quantizer scales frozen)",
        "trs",
        choices=LR_CONTROLS,
    )
    trs_lambda: float = _f(5e-3, "TRS: initial target rate R0 = lambda * sqrt(bits)", "trs")
    trs_momentum: float = _f(
        0.99, "EMA momentum m of the transition rate (the statistics and TRS's K)", "trs"
    )
    trs_granularity: str = _f(
        "global", "TRS: one U for all QAT layers, or one U per layer", "trs", choices=GRANULARITIES
    )
    trs_u0: float | None = _f(
        None, "TRS: U at the switch (default: the scheduled LR at the QAT phase's start)", "trs"
    )
    trs_eta: float | None = _f(None, "TRS: controller gain eta (default: U0)", "trs")
    # batch
    batch_size: int = _f(16, "sequences per micro-batch", "batch")
    seq_len: int = _f(128, "tokens per sequence", "batch")
    grad_accum: int = _f(1, "micro-batches per optimizer step", "batch")
    # eval / checkpoints / logging
    eval_every: int = _f(100, "evaluate every N steps (and at the end); 0: only at the end", "eval")
    eval_batches: int = _f(
        16, "validation batches per evaluation (the same ones each time)", "eval"
    )
    final_eval_batches: int = _f(
        0, "validation batches for the final evaluation (0: the whole validation split)", "eval"
    )
    save_every: int = _f(500, "checkpoint every N steps (and at the switch and the end)", "eval")
    save_steps: list[int] = _f(
        [],
        "also checkpoint after these steps, and keep them (a sweep's trunk saves its branch "
        "points)",
        "eval",
        nargs="*",
    )
    keep_checkpoints: int = _f(2, "keep the last K checkpoints (plus the switch one)", "eval")
    log_every: int = _f(1, "write a metrics line every N steps", "eval")
    basin_monitor: bool = _f(
        False,
        "QAT phase, at each evaluation: the cosine between the descent direction -g (STE "
        "gradient) and the way back from the quantized weights to the float weights at the "
        "switch (inward_cos, per layer too), and the first step whose QAT loss is within eps "
        "of the FP loss at the switch (basin_reentry); reconstructions of paper B's "
        "definitions (train/basin.py)",
        "eval",
    )

    def __post_init__(self) -> None:
        self.validate()

    # -- validation -----------------------------------------------------------------------

    def validate(self) -> None:
        """Raise ValueError naming the field, the problem and the fix (`config_checks.py`);
        normalizes counts, fractions, paths and overrides in place."""
        validate_config(self)

    @property
    def tokens_per_step(self) -> int:
        """Tokens consumed by one optimizer step."""
        return self.batch_size * self.seq_len * self.grad_accum

    # -- (de)serialization ----------------------------------------------------------------

    def to_dict(self) -> dict:
        """Plain data, YAML-able."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> TrainConfig:
        """Build from a (possibly kebab-case) mapping whose keys are fields or their flags'
        names (`mode` for q_mode); unknown keys, or a field given twice, raise ValueError."""
        d = {str(k).replace("-", "_"): v for k, v in d.items()}
        for name, flag in FLAG_NAMES.items():
            if flag in d:
                if name in d:
                    raise ValueError(f"{where}: {name} and {flag} are the same setting; keep one")
                d[name] = d.pop(flag)
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(
                f"{where}: unknown setting(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(names))}"
            )
        return cls(**d)

    def to_yaml(self) -> str:
        """The resolved config as YAML (the run directory's `config.yaml`)."""
        return "# mlx_qat.train resolved config\n" + yaml.safe_dump(self.to_dict(), sort_keys=False)

    def hash(self, exclude: tuple[str, ...] = ()) -> str:
        """sha256 of the settings that change what is trained (for resume checks), without
        the fields in `exclude`."""
        d = {k: v for k, v in self.to_dict().items() if k not in _NOT_HASHED | set(exclude)}
        defaults = TrainConfig.__dataclass_fields__
        for k in _HASHED_WHEN_SET:
            f = defaults[k]
            default = f.default_factory() if callable(f.default_factory) else f.default
            if k in d and d[k] == scratch_default(k, default):
                del d[k]
        if "quant_overrides" in d:  # their order matters (the first matching glob wins)
            d["quant_overrides"] = [[k, v] for k, v in d["quant_overrides"].items()]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def schedule(self) -> dict:
        """The `SCHEDULE_FIELDS` values (what `reschedule` lets a resume change)."""
        return {k: getattr(self, k) for k in SCHEDULE_FIELDS}


def load_config(path: str | Path) -> TrainConfig:
    """Read a `config.yaml` (a run's resolved config, or a hand-written one)."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"config file {path}: cannot read it ({e})") from e
    if not isinstance(raw, dict):
        raise ValueError(f"config file {path}: must hold a mapping of setting: value")
    return TrainConfig.from_dict(raw, where=str(path))
