"""Where a run starts: the run directory it may write into (`check_out_dir`, `clear_run`),
whether a checkpoint may continue it (`--resume`, `--branch-from`, the data), loading it
(`restore_checkpoint`), and, with several processes, every rank taking rank 0's start.

* Run directory: it holds only what the trainer (and `mlx_qat.eval`) writes (`RUN_ENTRIES`). A
  directory with other files (`notes.txt`, a hand-written `config.yaml`) is refused whatever the
  flags. One with checkpoints is refused to a plain run (`--resume` it, or `--overwrite`) and to
  `--branch-from`, so branching never overwrites or prunes another run's checkpoints; an
  attempt that stopped before its first checkpoint starts over. `--overwrite` deletes the run's
  own entries and keeps `data/` (content-addressed) and a tracker's `wandb/`, `swanlog/`.
* Resume: the checkpoint's `resume_hash` (the config hash without the data's path, which is
  checked by content) must be this config's. When only `SCHEDULE_FIELDS` differ (`train_hash`
  leaves them out too), `--reschedule` accepts the change — what the divergence message
  advises — and the new values apply from the resumed step on. Checkpoints from before
  `resume_hash` compare the whole `config_hash`.
* Branch: same model, QAT config and tokens per step, in this run's FP phase, at a step where
  both LR schedules agree.
* Data: the checkpoint's shards (by content key) and tokenizer (by sha256) must be this
  run's; the tokenizer recorded here is what `mlx_qat.eval` and `mlx_qat.convert` check.
* Model: a fine-tune's `--model` folder (its config.json and safetensors, by sha256) must be
  the one the run started from: the teacher and the basin reference are read from it again.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from ..checkpoint import (
    CHECKPOINTS,
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    qat_config_of,
    step_dir_name,
)
from ..fileio import remove_aside
from ..models.build import model_dir_sha256
from ..prepare import set_fake_quant
from .callbacks import callback_states
from .config import CONFIG_HEADER, DATA_FIELDS, SCHEDULE_FIELDS
from .optim import catch_up, load_optimizer_arrays, optimizer_arrays

logger = logging.getLogger(__name__)

DATA = "data"
TRACKER_DIRS = ("wandb", "swanlog")  # --report-to's files (report.py): kept by --overwrite
RUN_ENTRIES = ("config.yaml", "metrics.jsonl", "result.json", "loss.png", "eval.json", "eval.yaml",
               "tokenizer", "checkpoints", "fp_twin", DATA, *TRACKER_DIRS)  # fmt: skip


def foreign_entries(run: Path) -> list[str]:
    """Names in `run` that a training run does not write (or a config.yaml without our header)."""
    # Hidden files (.DS_Store...) are never written by a run, so they cannot be overwritten.
    names = sorted(p.name for p in run.iterdir() if not p.name.startswith("."))
    names = [n for n in names if ".tmp-" not in n]
    out = [n for n in names if n not in RUN_ENTRIES]
    config = run / "config.yaml"
    if config.is_file():
        try:
            ours = config.read_text(encoding="utf-8").startswith(CONFIG_HEADER)
        except (OSError, UnicodeDecodeError):
            ours = False
        if not ours:
            out.append("config.yaml (not written by mlx_qat.train)")
    return out


def check_out_dir(cfg) -> None:
    """Raise ValueError when training per `cfg` could overwrite something it must not."""
    run = Path(cfg.out)
    if run.exists() and not run.is_dir():
        raise ValueError(f"--out {run}: is a file, not a directory; choose another --out")
    if not run.is_dir() or (cfg.resume and list_checkpoints(run)):
        return
    foreign = foreign_entries(run)
    if foreign:
        shown = ", ".join(foreign[:6]) + (", ..." if len(foreign) > 6 else "")
        raise ValueError(
            f"--out {run}: holds files that are not a training run's ({shown}); a run writes "
            "config.yaml, metrics.jsonl, checkpoints/ and tokenizer/ there. Choose a new or "
            "empty directory"
        )
    if cfg.overwrite:
        return
    found = list_checkpoints(run)
    if cfg.branch_from:
        trained = [n for n in ("result.json",) if (run / n).exists()]
        if found:
            trained.insert(0, f"checkpoints up to {found[-1][1].name}")
        if trained:
            raise ValueError(
                f"--out {run}: already holds a run ({', '.join(trained)}); --branch-from would "
                "overwrite it. Choose a new --out, continue that run with --resume, or pass "
                "--overwrite to delete it and branch there"
            )
    elif found:
        raise ValueError(
            f"run directory {run} already has checkpoints (last: {found[-1][1].name}); pass "
            "--resume to continue it, --overwrite to start it afresh, or choose another --out"
        )


def clear_run(run: Path) -> list[str]:
    """Delete (`remove_aside`) the run's own entries but `data/` and the trackers'; returns
    their names."""
    removed = []
    for name in RUN_ENTRIES:
        path = run / name
        if name in (DATA, *TRACKER_DIRS) or not (path.exists() or path.is_symlink()):
            continue
        remove_aside(path)
        removed.append(name)
    return removed


# The trainer's position: what a checkpoint restores besides the arrays and its callbacks'
# states (`callbacks.py`), and what the other ranks take from rank 0.
POSITION = ("step", "phase", "tokens_seen", "elapsed", "last_eval", "last_eval_step",
            "last_test", "rescheduled")  # fmt: skip


def find_resume(cfg, run_dir: Path):
    """The checkpoint a run continues: `--branch-from`'s, the latest with `--resume`, or None."""
    if cfg.branch_from:
        return load_checkpoint(cfg.branch_from)
    if cfg.resume and list_checkpoints(run_dir):
        return load_checkpoint(latest_checkpoint(run_dir))
    if cfg.resume:
        logger.info("resume: no checkpoint in %s yet; starting from step 0", run_dir)
    return None


def check_resume(ckpt, cfg, run_dir: Path, model_dir: str | None = None) -> dict:
    """Raise CheckpointError unless `ckpt` may be resumed with `cfg`; returns the schedule
    settings that changed ({name: [old, new]}; non-empty only with `cfg.reschedule`)."""
    st = ckpt.state
    _check_model_dir(st, cfg, model_dir or cfg.model, ckpt.path)
    if "resume_hash" in st:
        same = st["resume_hash"] == cfg.hash(exclude=DATA_FIELDS)
    else:
        same = st.get("config_hash") == cfg.hash()
    if same:
        return {}
    old = st.get("schedule") or {}
    changed = {k: [old.get(k), v] for k, v in cfg.schedule().items() if old.get(k) != v}
    same_model = st.get("train_hash") == cfg.hash(exclude=DATA_FIELDS + SCHEDULE_FIELDS)
    if same_model and cfg.reschedule:
        return changed
    what = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items())
    if same_model and changed:
        raise CheckpointError(
            f"checkpoint {ckpt.path}: saved with another schedule ({what}; config hash "
            f"{st.get('config_hash')} -> {cfg.hash()}). To continue this run with the new "
            "values from this step on, add --reschedule; or resume with the run's own config "
            f"(--config {run_dir / 'config.yaml'})"
        )
    raise CheckpointError(
        f"checkpoint {ckpt.path}: saved with config hash {st.get('config_hash')}, but this "
        f"config hashes to {cfg.hash()}: the settings that shape training changed. Resume "
        f"with the run's own config (--config {run_dir / 'config.yaml'}), or start a new run "
        "(another --out)"
    )


def _check_model_dir(st: dict, cfg, model_dir: str | None, where) -> None:
    """On resume, `--model`'s folder must hold the files the run started from (unchecked for
    checkpoints from before the hash was recorded)."""
    if not cfg.model or not st.get("model_sha256"):
        return
    now = model_dir_sha256(model_dir)
    if now != st["model_sha256"]:
        raise CheckpointError(
            f"checkpoint {where}: the run started from another --model {cfg.model} (its "
            f"config.json and safetensors hashed to {st['model_sha256'][:12]}, now "
            f"{now[:12]}); the teacher and the basin reference would silently change. Resume "
            "with the original model files, or start a new run (another --out)"
        )


def check_branch(ckpt, cfg, plan, model_config: dict, qcfg) -> None:
    """Raise CheckpointError unless this run (`cfg`, `plan`) may start from `ckpt`."""
    st, where = ckpt.state, f"--branch-from {ckpt.path}"
    if ckpt.model_config.get("model_type") != model_config.get("model_type") or (
        qat_config_of(ckpt).to_dict() != qcfg.to_dict()
    ):
        raise CheckpointError(f"{where}: another model or QAT config than this run's")
    if st.get("tokens_per_step") != cfg.tokens_per_step:
        raise CheckpointError(f"{where}: its steps have another number of tokens")
    step = int(st["step"])
    if st["phase"] != "fp" or step > plan.fp_steps:
        raise CheckpointError(
            f"{where}: a branch must start in this run's FP phase (step <= "
            f"{plan.fp_steps}); the checkpoint is at step {step}, phase {st['phase']}"
        )
    if step and not math.isclose(st.get("lr", -1), plan.lr_at(step - 1), rel_tol=1e-6):
        raise CheckpointError(
            f"{where}: its LR at step {step - 1} was {st.get('lr')}, this run's schedule "
            f"gives {plan.lr_at(step - 1)}; branch only where the schedules agree"
        )


def check_data(ckpt, bundle) -> None:
    """Raise CheckpointError unless `bundle` is the data `ckpt` was trained on (the shards'
    folder name for checkpoints without a content key)."""
    data = ckpt.state.get("data") or {}
    key, shards = data.get("shards_key"), data.get("shards")
    same = key == bundle.manifest.get("key") if key else Path(shards or "").name == bundle.path.name
    if shards and not same:
        raise CheckpointError(
            f"checkpoint {ckpt.path}: trained on the token shards {shards}, but this run "
            f"reads {bundle.path}; the batches would differ. Pass the same --data"
        )
    tok = ckpt.state.get("tokenizer_sha256")
    have = bundle.manifest["tokenizer"]["sha256"]
    if tok and tok != have:
        raise CheckpointError(
            f"checkpoint {ckpt.path}: trained with the tokenizer sha256 {tok}, but the data "
            f"{bundle.path} was encoded with {have}. Pass the run's own --data"
        )


def checkpoint_state(cfg, bundle, model_dir: str | None = None) -> dict:
    """The entries of `state.json` that the checks above read back."""
    return {
        "config_hash": cfg.hash(),
        "resume_hash": cfg.hash(exclude=DATA_FIELDS),
        "train_hash": cfg.hash(exclude=DATA_FIELDS + SCHEDULE_FIELDS),
        "schedule": cfg.schedule(),
        "tokenizer_sha256": bundle.manifest["tokenizer"]["sha256"],
        "model_sha256": model_dir_sha256(model_dir or cfg.model) if cfg.model else None,
    }


def rng_seed(seed: int, step: int) -> int:
    """The seed the trainer gives `mx.random` before step `step`."""
    return (seed * 1_000_003 + step) % (1 << 63)


def trainer_state(t) -> dict:
    """Trainer `t`'s `state.json`: its position, the data position, the RNG, the plan and what
    the checks above compare."""
    cfg, step = t.cfg, t.step
    return {
        "step": step,
        "tokens_seen": t.tokens_seen,
        "tokens_per_step": cfg.tokens_per_step,
        "phase": t.phase,
        "lr": t.plan.lr_at(step - 1) if step else None,
        "data": {
            **t.batches.state(step * cfg.grad_accum),
            "grad_accum": cfg.grad_accum,
            "shards": str(Path(t.bundle.path).resolve()),
            "shards_key": t.bundle.manifest.get("key"),
        },
        "rng": {"seed": cfg.seed, "next_step_seed": rng_seed(cfg.seed, step)},
        **checkpoint_state(cfg, t.bundle, t.model_dir),
        "plan": {k: getattr(t.plan, k) for k in ("total_steps", "fp_steps", "qat_steps")},
        "eval": t.last_eval,
        "eval_step": t.last_eval_step,
        "test": t.last_test,
        "metrics_lines": t.metrics.lines,
        "elapsed_s": t.elapsed,
        "world_size": t.dist.size,
        # each feature's own state (callbacks.py): "qat_update" (trs.py), "basin" (basin.py)
        **callback_states(t.callbacks),
    }


def restore_checkpoint(t, ckpt) -> tuple[dict, int | None]:
    """Check `ckpt` against trainer `t`'s run and load its weights and optimizer state (no
    file is written); returns the position to continue from (`POSITION` and "callbacks") and
    the metrics lines to keep (None for a branch)."""
    st, cfg = ckpt.state, t.cfg
    rescheduled = {}
    if cfg.branch_from:
        check_branch(ckpt, cfg, t.plan, t.model_config, t.qcfg)
    else:
        changed = check_resume(ckpt, cfg, t.run_dir, t.model_dir)
        if changed:
            rescheduled = {"changed": changed}
            logger.warning("reschedule: from step %s, %s", st["step"], changed)
    if t.bundle is not None:
        check_data(ckpt, t.bundle)
    catch_up(t, int(st["step"]))  # grid first: past the boundary, the weights train too
    try:
        t.model.load_weights(list(ckpt.weights.items()), strict=True)
        load_optimizer_arrays(t.optimizer, ckpt.optimizer_state)
    except ValueError as e:
        raise CheckpointError(
            f"checkpoint {ckpt.path}: does not match this model ({e}); resume with the "
            "run's own config or start a new run"
        ) from None
    step = int(st["step"])
    position = {
        "step": step,
        "phase": st["phase"],
        "tokens_seen": int(st.get("tokens_seen", step * cfg.tokens_per_step)),
        "elapsed": float(st.get("elapsed_s", 0.0)),
        "last_eval": st.get("eval") or {},
        "last_eval_step": int(st.get("eval_step", -1)),
        # None for a checkpoint saved before the run's end (or before the test split existed)
        "last_test": st.get("test"),
        "rescheduled": rescheduled,
        # e.g. the transition statistics and TRS (trs.py), the basin monitor's (basin.py);
        # None before the switch
        "callbacks": {cb.name: st.get(cb.name) for cb in t.callbacks if cb.name},
    }
    set_fake_quant(t.model, bool(ckpt.qat.get("fake_quant")))
    mx.eval(t.model.parameters(), t.optimizer.state)
    how = "branched from" if cfg.branch_from else "resumed from"
    logger.info("%s %s (step %d, phase %s)", how, ckpt.path, step, st["phase"])
    return position, None if cfg.branch_from else int(st.get("metrics_lines", 0))


def switch_checkpoint(t) -> Path:
    """Trainer `t`'s switch checkpoint (the trainer always keeps it)."""
    return Path(t.run_dir) / CHECKPOINTS / step_dir_name(t.plan.switch_step)


def switch_weights(t, layout: dict, pick, what: str) -> dict[str, mx.array]:
    """`pick(the switch checkpoint's weights)`, read by rank 0 and received by every rank
    (`layout`: the arrays to receive, as `dist.broadcast_arrays` takes them)."""
    if t.dist.is_main:
        layout = pick(load_checkpoint(switch_checkpoint(t), optimizer=False).weights)
    return t.dist.broadcast_arrays(layout, what)


def take_main_state(t) -> dict | None:
    """Several processes: every rank takes rank 0's weights and optimizer state, after checking
    that it reads rank 0's data; returns rank 0's position on the other ranks, None on 0."""
    dist, b = t.dist, t.bundle
    data = [b.manifest.get("key"), b.manifest["tokenizer"]["sha256"]]
    mine = {k: getattr(t, k) for k in POSITION}
    state = dist.broadcast_json({**mine, "callbacks": callback_states(t.callbacks), "data": data})
    with dist.agreed("comparing the data with rank 0's"):
        if state["data"] != data:
            raise ValueError(
                f"rank {dist.rank}: the data {b.path} is not rank 0's (shards key and "
                f"tokenizer sha256 {state['data']}, here {data}); give every machine the same "
                "prepared --data directory (a copy of rank 0's)"
            )
    if not dist.is_main:
        set_fake_quant(t.model, state["phase"] == "qat" and not t.cfg.ablate_qat)
        catch_up(t, state["step"])  # rank 0's optimizer state holds the joined weights'
    # rank 0 keeps its own arrays; the others receive them bit for bit
    weights = dist.broadcast_arrays(dict(tree_flatten(t.model.parameters())), "weights")
    moments = dist.broadcast_arrays(optimizer_arrays(t.optimizer), "optimizer state")
    if dist.is_main:
        return None
    t.model.load_weights(list(weights.items()), strict=True)
    load_optimizer_arrays(t.optimizer, moments)
    mx.eval(t.model.parameters(), t.optimizer.state)
    return {k: state[k] for k in (*POSITION, "callbacks")}
