"""`results.jsonl`: one row per finished run, appended atomically, read back defensively.

A row holds what the law fit needs (the schema of `mlx_qat/fit/rows.py`: N, D, D_fp, D_qat,
bits (null for a pure-FP run), final_loss (the fake-quant model's for a QAT run, the float
model's for an FP run)), and the run's name, groups, config hash, data identity (`data`,
`DataBundle.identity`: the config hash holds only the data's path), sizes, S, f, settings,
the FP / QAT / PTQ loss and bits per byte on the validation split, `test_loss` when the data
has a test split, wall time and tokens/s. A run with its float twin (`fp_twins: true`) adds
the twin's `fp_twin_*` losses and `qat_penalty = final_loss − fp_twin_loss` (and
`qat_penalty_test`); null without a twin.

Each row is one `os.write` of one line on an `O_APPEND` descriptor, then fsync: a kill leaves
at worst a torn last line, which `read_rows` ignores and `append_row` cuts off first.
"""

from __future__ import annotations

from ..fileio import append_jsonl
from ..fileio import read_rows as read_rows  # every complete row (none without the file)
from ..train.config import TrainConfig


def make_row(name: str, groups: tuple[str, ...], config: TrainConfig, result: dict) -> dict:
    """The row of one finished run, from its config and `train()` result."""
    plan, ev = result["plan"], result.get("eval") or {}
    fp, qat, ptq = ev.get("fp"), ev.get("qat"), ev.get("ptq")
    is_fp = plan["qat_steps"] == 0
    final = fp if is_fp else qat
    return {
        "name": name,
        "groups": list(groups),
        "config_hash": config.hash(),
        "N": plan["n_params"],
        "N_nonemb": plan["n_params_no_embed"],
        "param_bytes": plan["param_bytes"],
        "nominal_bytes": plan["n_params"] * config.bits / 8,
        "D": plan["total_steps"] * plan["tokens_per_step"],
        "D_fp": plan["fp_tokens"],
        "D_qat": plan["qat_tokens"],
        "S": plan["tokens_per_byte"],
        "f": plan["fraction"],
        "f_requested": plan["requested"],
        "f_hat": plan["f_hat"],
        "bits": None if is_fp else config.bits,
        "ptq_bits": config.bits,
        "group_size": config.group_size,
        "quantizer": config.quantizer,
        "pipeline": config.pipeline,
        "seed": config.seed,
        "final_loss": final["loss"] if final else None,
        "final_bpb": final["bpb"] if final else None,
        **{
            f"{k}_{m}": (v[m] if v else None)
            for m in ("loss", "bpb")
            for k, v in (("fp", fp), ("qat", qat), ("ptq", ptq))
        },
        **_twin_fields(result, final, "fp" if is_fp else "qat"),
        "eval_tokens": (fp or {}).get("tokens"),
        "data": result.get("data"),
        "wall_s": result.get("train_s"),
        "tokens_per_s": result.get("tokens_per_s"),
    }


def _loss(ev: dict | None, key: str) -> float | None:
    v = (ev or {}).get(key)
    return v["loss"] if v else None


def _twin_fields(result: dict, final: dict | None, kind: str) -> dict:
    """The run's test loss, its float twin's losses and the penalty (module docstring)."""
    twin = result.get("twin") or {}
    tv, tt = twin.get("eval"), twin.get("test")
    own, own_test = final["loss"] if final else None, _loss(result.get("test"), kind)
    fp, fp_test = _loss(tv, "fp"), _loss(tt, "fp")
    return {
        "test_loss": own_test,
        "fp_twin_loss": fp,
        "fp_twin_bpb": ((tv or {}).get("fp") or {}).get("bpb"),
        "fp_twin_ptq_loss": _loss(tv, "ptq"),
        "fp_twin_test_loss": fp_test,
        "qat_penalty": own - fp if own is not None and fp is not None else None,
        "qat_penalty_test": (
            own_test - fp_test if own_test is not None and fp_test is not None else None
        ),
    }


append_row = append_jsonl  # one row, atomically (module docstring)
