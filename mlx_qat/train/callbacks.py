"""The trainer's extension points: a feature is a `TrainingCallback` (as in mlx-lm's
`mlx_lm.tuner.callbacks`), not code that sets the trainer's attributes.

The trainer `t` calls each of its callbacks, in order, at these events (every hook is a no-op
here; a feature overrides the ones it needs):

    on_train_begin(t)                after set-up: settings checked, a checkpoint restored (the
                                     phase known), the run directory written; before step 0
    on_phase_switch(t)               FP -> QAT: fake quant just turned on, the teacher built,
                                     before the step is compiled again
    on_step_end(t, step, info)       after step `step` (steps completed); `info` the "train"
                                     record about to be written (None at a step that writes
                                     none); returns entries to add to it, or None
    on_eval(t, step, info)           a periodic evaluation `info` (FP / QAT / PTQ); returns
                                     entries to add to its "eval" record, or None
    on_record(record)                every record written to metrics.jsonl, as written
    on_train_end(t, result)          the run's result; returns entries to add to it, or None

A callback reads the trainer and writes only itself (and `t.metrics`). Its `state_dict()`
(JSON data, or None) is saved in every checkpoint's `state.json` under its `name` (none
without a name), and `load_state_dict` receives it back on resume before `on_train_begin`
(None when the checkpoint has none; rank 0's on every rank).
"""

from __future__ import annotations


class TrainingCallback:
    """A trainer feature (see the module header for when each hook runs)."""

    name: str | None = None  # its key in state.json; None: no state to save

    def on_train_begin(self, t) -> None: ...

    def on_phase_switch(self, t) -> None: ...

    def on_step_end(self, t, step: int, info: dict | None) -> dict | None: ...

    def on_eval(self, t, step: int, info: dict) -> dict | None: ...

    def on_record(self, record: dict) -> None: ...

    def on_train_end(self, t, result: dict) -> dict | None: ...

    def state_dict(self) -> dict | None: ...

    def load_state_dict(self, state: dict | None) -> None: ...


def callback_states(callbacks: list[TrainingCallback]) -> dict:
    """{name: state_dict()} of the callbacks that have a name (what a checkpoint saves)."""
    return {cb.name: cb.state_dict() for cb in callbacks if cb.name}


def load_callback_states(callbacks: list[TrainingCallback], states: dict) -> None:
    """Give each named callback its entry of `states` (None when absent)."""
    for cb in callbacks:
        if cb.name:
            cb.load_state_dict(states.get(cb.name))
