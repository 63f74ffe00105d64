"""Evaluate a checkpoint: FP, QAT and PTQ loss and bits per byte (`mlx_qat.eval_modes`) on the
validation split or the held-out test split.

    >>> from mlx_qat.eval import evaluate_checkpoint
    >>> ev = evaluate_checkpoint("runs/main")          # the run's latest checkpoint
    >>> ev["qat"]["loss"], ev["gap_recovered"]
    >>> evaluate_checkpoint("runs/main", split="test")  # the numbers to report
    >>> evaluate_checkpoint("runs/main", teacher="float_model")  # + each mode's KL to it

Settings the call leaves out come from the run's `config.yaml` (data, batch shape, and
`final_eval_batches`: by default the whole split). Tune on "val"; "test" is for reporting.
"""

from __future__ import annotations

from pathlib import Path

from mlx.utils import tree_flatten

from .checkpoint import STATE_FILE, build_model, load_checkpoint
from .data.resolve import open_eval_data
from .eval_modes import all_minmax, eval_triple
from .model_source import ModelSource, load_float, resolve_model
from .train.config import load_config
from .train.memory import check_forward_memory


def evaluate_checkpoint(
    path: str | Path,
    data: str | None = None,
    eval_batches: int | None = None,
    batch_size: int | None = None,
    seq_len: int | None = None,
    split: str = "val",
    teacher: str | Path | None = None,
    revision: str | None = None,
) -> dict:
    """FP / QAT / PTQ loss and bpb of a run's latest checkpoint or of one checkpoint dir.

    Args:
        data: prepared data dir (default: the one the checkpoint was trained on).
        eval_batches: batches (default: the run's final_eval_batches; 0 = all).
        batch_size, seq_len: the batch shape (default: the run's).
        split: "val" (validation: curves, tuning) or "test" (held out: report only).
        teacher: an mlx-lm model dir or Hugging Face repo id (at `revision`), or a run /
            checkpoint dir: each mode also reports `kl`, the mean KL(teacher ‖ model) per
            token at T = 1. Its vocabulary and tokenizer must be the run's (`check_teacher`).

    Returns:
        `eval_triple`'s dict plus "checkpoint", "step", "phase", "split", "tokens" and
        "minmax" (True when QAT and PTQ are the same grid, so the gap needs the FP twin).
    """
    if split not in ("val", "test"):
        raise ValueError(f"--split {split}: choose val or test")
    check_batch_args(eval_batches, batch_size, seq_len)
    ckpt = load_checkpoint(path, optimizer=False)
    run_dir = ckpt.path.parent.parent
    cfg = load_config(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else None
    data = data or _recorded_data(ckpt, run_dir) or (cfg and cfg.data)
    if not data:
        raise ValueError(f"{path}: no data recorded; pass --data DIR")
    seq = seq_len if seq_len is not None else (cfg.seq_len if cfg else 128)
    bs = batch_size if batch_size is not None else (cfg.batch_size if cfg else 16)
    nb = eval_batches if eval_batches is not None else (cfg.final_eval_batches if cfg else 0)
    bundle, batches, bpt = open_eval_data(data, bs, seq, nb or None, split)
    check_vocabulary(ckpt, bundle)
    source = resolve_model(teacher, revision, "--teacher") if teacher else None
    if source is not None:
        check_teacher(source, ckpt, bundle)
    model = build_model(ckpt)
    ready = ckpt.qat.get("phase") == "qat"
    teacher_model = load_float(source, frozen=True, what="--teacher")[0] if source else None
    check_eval_memory(ckpt.model_config, batches, model, teacher_model)
    ev = eval_triple(model, batches, bpt, quantizers_ready=ready, teacher=teacher_model)
    return {
        "checkpoint": str(ckpt.path),
        "step": ckpt.step,
        "phase": ckpt.qat.get("phase"),
        "split": split,
        "tokens": getattr(batches, "num_tokens", None),
        "minmax": all_minmax(model),
        **ev,
    }


def check_batch_args(eval_batches, batch_size, seq_len) -> None:
    """ValueError naming the flag for --eval-batches < 0, --batch-size or --seq-len < 1."""
    for name, value, low in (
        ("eval_batches", eval_batches, 0), ("batch_size", batch_size, 1), ("seq_len", seq_len, 1)
    ):  # fmt: skip
        if value is not None and value < low:
            raise ValueError(f"--{name.replace('_', '-')} {value}: must be >= {low}")


def param_bytes(model) -> int:
    """Bytes of every parameter of `model` (0 for None)."""
    if model is None:
        return 0
    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


def check_eval_memory(
    model_config: dict, batches, model, teacher=None, extra_bytes: int = 0
) -> dict:
    """Raise ValueError, naming a --seq-len that fits, when one evaluation forward of the first
    batch cannot fit in memory (`train.memory.check_forward_memory`: MLX would crash, on Linux
    with a segfault). `extra_bytes`: weight copies the caller keeps besides the model."""
    if hasattr(batches, "num_windows"):
        rows, seq = min(batches.batch_size, batches.num_windows), batches.seq_len
    else:
        rows, seq = batches[0].shape[0], batches[0].shape[1] - 1
    weights = param_bytes(model) + extra_bytes
    return check_forward_memory(
        model_config, weights, rows, seq, teacher_bytes=param_bytes(teacher)
    )


def _recorded_data(ckpt, run_dir: Path) -> str | None:
    # the shards the checkpoint was trained on; for a copied or moved run whose recorded
    # (absolute) path is gone, the same-named shards under the run's own `data/`
    shards = (ckpt.state.get("data") or {}).get("shards")
    if not shards or Path(shards).is_dir():
        return shards
    local = run_dir / "data" / Path(shards).name
    return str(local) if local.is_dir() else shards


def check_vocabulary(ckpt, bundle) -> None:
    """Raise ValueError unless the data `bundle` was encoded for the checkpoint's model: its
    tokenizer is the one recorded in the checkpoint (sha256) and its ids fit the embedding."""
    model_vocab = int(ckpt.model_config.get("vocab_size") or 0)
    recorded = ckpt.state.get("tokenizer_sha256")
    have = bundle.manifest["tokenizer"]["sha256"]
    if recorded and recorded != have:
        raise ValueError(
            f"data {bundle.path}: encoded with the tokenizer sha256 {have} (vocab "
            f"{bundle.vocab_size}), but checkpoint {ckpt.path} was trained with {recorded}; "
            "its loss would be meaningless. Pass --data with the run's own data"
        )
    if model_vocab and bundle.vocab_size > model_vocab:
        raise ValueError(
            f"data {bundle.path}: vocabulary {bundle.vocab_size} is larger than the model's "
            f"({model_vocab}, checkpoint {ckpt.path}); pass --data with the run's own data"
        )
    if not recorded and model_vocab and bundle.vocab_size != model_vocab:
        raise ValueError(
            f"data {bundle.path}: vocabulary {bundle.vocab_size}, the model's is {model_vocab} "
            f"(checkpoint {ckpt.path}); the data was made with another tokenizer. Pass --data "
            "with the run's own data"
        )


TEACHER_FIX = (
    "pass the run's own float model: one of its checkpoints (e.g. the FP-phase one before the "
    "switch), its `mlx_qat.convert --dequantize` export, or the --model it was fine-tuned from"
)


def check_teacher(teacher: ModelSource, ckpt, bundle) -> None:
    """Raise ValueError unless the `--teacher` reads the run's tokens (its vocabulary size and
    tokenizer sha256 are the checkpoint's), before it is loaded: a KL between models of
    different tokenizers compares unrelated tokens (and of different sizes, fails in MLX)."""
    vocab = teacher.vocab_size
    sha, where = teacher.tokenizer_identity() or (None, str(teacher.path))
    model_vocab = int(ckpt.model_config.get("vocab_size") or 0)
    if vocab and model_vocab and vocab != model_vocab:
        raise ValueError(
            f"--teacher {teacher.name}: vocabulary {vocab}, but the model of checkpoint {ckpt.path} "
            f"has {model_vocab}: the teacher must read the run's tokens; {TEACHER_FIX}"
        )
    mine = ckpt.state.get("tokenizer_sha256")
    mine_where = f"recorded in {ckpt.path / STATE_FILE}"
    if not mine:
        mine, mine_where = bundle.manifest["tokenizer"]["sha256"], f"of the data {bundle.path}"
    if sha is None:
        raise ValueError(
            f"--teacher {teacher.name}: holds no tokenizer and records none, so it cannot be checked "
            f"to read the run's tokens (tokenizer sha256 {mine[:16]}, {mine_where}); "
            f"{TEACHER_FIX}, or put the tokenizer it was trained with beside its weights"
        )
    if sha != mine:
        raise ValueError(
            f"--teacher {teacher.name}: its tokenizer (sha256 {sha[:16]}, {where}) is not the run's "
            f"(sha256 {mine[:16]}, {mine_where}): the KL would compare different tokens; "
            f"{TEACHER_FIX}"
        )
