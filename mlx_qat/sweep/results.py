"""`results.jsonl`: one row per finished run, appended atomically, read back defensively.

A row holds what the law fit needs and nothing it must recompute (the schema `mlx_qat.fit`
reads, `mlx_qat/fit/rows.py`): N, D, D_fp, D_qat, bits (null for a pure-FP run), final_loss (the
fake-quant model's loss for a QAT run, the float model's for an FP run), plus the run's name and
groups, config hash, the data's identity (`data`: the shards' key and the tokenizer's sha256,
`DataBundle.identity`; the config hash holds only the data's path), N without embeddings, exact
parameter bytes (every tensor at its own bits) and nominal N·B/8, S, f, group size, quantizer,
pipeline, seed, the FP / QAT / PTQ loss and bits per byte of the final evaluation (the whole
validation split), wall time and tokens/s. The test split's final loss (`test_loss`, of the
same model as `final_loss`) when the data has one. A run trained with its float twin
(`fp_twins: true`: the QAT phase again with fake quant off, the same LR schedule) adds the
twin's losses — `fp_twin_loss` / `fp_twin_bpb` / `fp_twin_ptq_loss` on validation,
`fp_twin_test_loss` on test — and the QAT penalty at equal schedule, `qat_penalty =
final_loss − fp_twin_loss` (`qat_penalty_test` on test); null without a twin.

Appending: each row is one `os.write` of one line on an `O_APPEND` descriptor, then fsync. A
kill can at worst leave a line without its newline at the end of the file; `read_rows` ignores
it, and `append_row` cuts it off before writing the next row, so a half-written row is never
read and never glued to the next one.
"""

from __future__ import annotations

from pathlib import Path

from ..fileio import append_jsonl, read_jsonl
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
            f"{k}_loss": (v["loss"] if v else None)
            for k, v in (("fp", fp), ("qat", qat), ("ptq", ptq))
        },
        **{
            f"{k}_bpb": (v["bpb"] if v else None)
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


def read_rows(path: str | Path) -> list[dict]:
    """Every complete row of `path` (none if it does not exist); a torn last line is skipped."""
    return [row for _, row in read_jsonl(path).rows]


def append_row(path: str | Path, row: dict) -> None:
    """Append one row atomically (see the module docstring)."""
    append_jsonl(path, row)
