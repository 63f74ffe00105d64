"""Settings whose default depends on the run: training from scratch, or fine-tuning `--model`.

A pretrained model needs a fine-tune's optimizer settings, not a pretraining run's: at the
from-scratch lr 3e-3 one step took SmolLM2-135M's validation loss from 4.26 to 9.63 nats, and
the auto QAT fraction exp(−a / ln S) is 0 at a pretrained model's S (no QAT at all). So these
fields default to None ("not given") in `TrainConfig`, and `fill_defaults` resolves each one
that is still None when the config is validated — an explicit value (flag, YAML, Python) always
wins, and the resolved config (`config.yaml`, the config hash, resume) holds the values used:

    field                from scratch      fine-tune (--model)
    lr                   3e-3              1e-4
    qat_fraction         auto              1 (QAT from the first step)
    auto_scale           2 at 2 bits, 1    1
    weight_decay         0.1               0
    quantizer_lr_scale   0.09 at 2 bits,   min(1, 7 / (2^bits − 1)): the grid at the weights' LR
                         0.03 above        at 2 and 3 bits, slower above (below)
    scale_grad           ste               fixed_codes with --quantizer learned_affine, else ste
    kd_temperature       1                 2 with --objective kd or mix, else 1

A fine-tune's grid LR is absolute (Adam moves a parameter by ~lr per step whatever its size)
while a group's scale shrinks as 1 / (2^bits − 1): the 3-bit recipe's grid LR moved an 8-bit
grid by several of its own steps per step and left a d2 model 2 nats above its float loss
(benchmarks/results/diagnose_calibration.md), so above 3 bits the grid's LR is scaled down to
keep its step relative to the scale what it is at 3 bits.

The from-scratch column is the main job's recipe search (`benchmarks/results/from_scratch_gap.md`,
issue #24): at 3 and 4 bits the defaults won on every axis; at 2 bits a grid LR of 0.09× the
weights' with twice the auto fraction was closer to the float twin on validation, inside both
brackets (0.03/0.09/0.27, ×1/×2/×4), and on test over 3 seeds (+4.22 % vs +4.29 %; +14 % wall).

The fine-tune column is the measured SmolLM2 recipe (README "QAT a pretrained model",
`benchmarks/bench_pretrained.py`). The quantizer and the objective stay the user's choice (the
recipe passes `--quantizer learned_affine --objective kd`): they decide what is trained and
what memory the teacher takes, not how fast.
"""

from __future__ import annotations

from typing import Any

# field -> (from-scratch default, fine-tune default); a callable takes the config.
SCRATCH: dict[str, Any] = {
    "lr": 3e-3,
    "qat_fraction": "auto",
    "auto_scale": lambda c: 2.0 if c.bits == 2 else 1.0,
    "weight_decay": 0.1,
    "quantizer_lr_scale": lambda c: 0.09 if c.bits == 2 else 0.03,
    "scale_grad": "ste",
    "kd_temperature": 1.0,
}
FINETUNE: dict[str, Any] = {
    "lr": 1e-4,
    "qat_fraction": 1.0,
    "auto_scale": 1.0,
    "weight_decay": 0.0,
    "quantizer_lr_scale": lambda c: min(1.0, 7 / (2**c.bits - 1)),
    "scale_grad": lambda c: "fixed_codes" if c.quantizer == "learned_affine" else "ste",
    "kd_temperature": lambda c: 2.0 if c.objective in ("kd", "mix") else 1.0,
}
SCRATCH_HELP = {
    "auto_scale": "2 at 2 bits, else 1",
    "quantizer_lr_scale": "0.09 at 2 bits, else 0.03",
}
FINETUNE_HELP = {  # how --help states them
    "lr": "1e-4",
    "qat_fraction": "1",
    "auto_scale": "1",
    "weight_decay": "0",
    "quantizer_lr_scale": "min(1, 7 / (2^bits - 1))",
    "scale_grad": "fixed_codes with --quantizer learned_affine",
    "kd_temperature": "2 with --objective kd or mix",
}


def default_help(name: str) -> str:
    """`(default: X; with --model: Y)` for --help."""
    return (
        f"(default: {SCRATCH_HELP.get(name, SCRATCH[name])}; with --model: {FINETUNE_HELP[name]})"
    )


def fill_defaults(config) -> None:
    """Set every field of `SCRATCH` still None on `config` to its from-scratch default (its
    fine-tune default with `config.model`)."""
    table = FINETUNE if config.model else SCRATCH
    for name in SCRATCH:
        if getattr(config, name) is None:
            value = table[name]
            setattr(config, name, value(config) if callable(value) else value)


def scratch_default(name: str, field_default: Any) -> Any:
    """The value a field holds when a from-scratch run leaves it out (for the config hash)."""
    return SCRATCH.get(name, field_default)
