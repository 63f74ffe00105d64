"""`TrainingDiverged`: a non-finite loss or gradient norm stops the run before anything is
saved, so the last checkpoint stays the last good one; the message says how to go on."""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import latest_checkpoint


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm became NaN/inf; the last checkpoint is the last good one."""


def diverged_message(run_dir: Path, step: int, loss: float, norm: float) -> str:
    """What stopped the run at `step`, its last good checkpoint in `run_dir`, and the fix."""
    last = latest_checkpoint(run_dir)
    return (
        f"step {step}: loss {loss}, gradient norm {norm} (not finite); training stopped "
        f"without saving. The last good checkpoint is "
        f"{last if last else 'none (no checkpoint yet)'}. Lower --lr, lengthen the warmup or "
        "tighten --grad-clip, then continue from it with --resume --reschedule (the new values "
        "apply from that step on)"
    )
