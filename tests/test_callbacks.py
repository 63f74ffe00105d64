"""The trainer's extension points (mlx_qat/train/callbacks.py): each hook runs when the module
header says, what a hook returns lands in the record or result, and a named callback's state
is saved in every checkpoint and handed back on resume."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_train_fixtures import Stop, tiny_config, tiny_data_dir  # noqa: F401

from mlx_qat.checkpoint import list_checkpoints, load_checkpoint
from mlx_qat.train import train
from mlx_qat.train.callbacks import TrainingCallback
from mlx_qat.train.metrics import read_metrics


class Tally(TrainingCallback):
    """Counts the steps it saw (its state), logs what each hook received."""

    name = "tally"

    def __init__(self, stop_at: int | None = None):
        self.steps, self.stop_at, self.calls, self.loaded = 0, stop_at, [], "never"

    def on_train_begin(self, t):
        self.calls.append(("begin", t.step, t.phase))

    def on_phase_switch(self, t):
        self.calls.append(("switch", t.step, t.phase))

    def on_step_end(self, t, step, info):
        self.steps += 1
        if self.stop_at == step:
            raise Stop
        return {"tally": self.steps} if info is not None else None

    def on_eval(self, t, step, info):
        return {"tally_eval_fp": info["fp"]["loss"]}

    def on_record(self, record):
        self.calls.append(("record", record["kind"], record["step"]))

    def on_train_end(self, t, result):
        return {"tally": self.steps}

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.loaded = state
        self.steps = state["steps"] if state else 0


def test_hooks_records_and_result(tiny_data_dir, tmp_path):  # noqa: F811
    """Steps 0..16, QAT from 12: begin at step 0 in the FP phase, the switch at 12 in the QAT
    phase, an entry on each train line (the callback's count: the step) and eval line (the
    eval's own FP loss), every record as written, the result's entry."""
    cfg = tiny_config(tiny_data_dir, tmp_path / "run", tokens=16 * 4 * 32, eval_every=8,
                      log_every=4)  # fmt: skip
    cb = Tally()
    result = train(cfg, callbacks=[cb])
    assert cb.calls[0] == ("begin", 0, "fp") and cb.loaded == "never"  # a fresh run
    assert [c for c in cb.calls if c[0] == "switch"] == [("switch", 12, "qat")]
    lines = read_metrics(tmp_path / "run")
    train_lines = [r for r in lines if r["kind"] == "train"]
    assert [r["step"] for r in train_lines] == [4, 8, 12, 16]
    assert all(r["tally"] == r["step"] for r in train_lines)
    evals = [r for r in lines if r["kind"] == "eval"]
    assert evals and all(r["tally_eval_fp"] == r["fp"]["loss"] for r in evals)
    assert [c[1:] for c in cb.calls if c[0] == "record"] == [(r["kind"], r["step"]) for r in lines]
    assert result["tally"] == 16


def test_a_named_callbacks_state_is_checkpointed_and_resumed(tiny_data_dir, tmp_path):  # noqa: F811
    """Stopped at step 14 (checkpoints at 5, 10 and the switch, 12), the resumed run's callback
    receives the step-12 checkpoint's state and ends with the uninterrupted count."""
    cfg = tiny_config(tiny_data_dir, tmp_path / "run", tokens=16 * 4 * 32, save_every=5)
    with pytest.raises(Stop):
        train(cfg, callbacks=[Tally(stop_at=14)])
    found = dict(list_checkpoints(tmp_path / "run"))
    assert sorted(found) == [5, 10, 12]
    assert load_checkpoint(found[10]).state["tally"] == {"steps": 10}
    assert load_checkpoint(found[12]).state["tally"] == {"steps": 12}
    cb = Tally()
    result = train(replace(cfg, resume=True), callbacks=[cb])
    assert cb.loaded == {"steps": 12} and cb.calls[0] == ("begin", 12, "fp")
    assert result["tally"] == 16
