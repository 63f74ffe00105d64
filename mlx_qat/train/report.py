"""`--report-to wandb|swanlab`: metrics.jsonl's records, also sent to an experiment tracker
through mlx-lm's reporting callbacks (as `mlx_lm.lora --report-to` does).

Each record becomes one log call at its step, its numbers and booleans named after its kind
(nested dicts flattened with "/"): {"kind": "eval", "step": 40, "fp": {"loss": 3.1}} ->
{"iteration": 40, "eval/fp/loss": 3.1}; "train" records through `on_train_loss_report`, the
others through `on_val_loss_report`. The tracker's run is named after the run directory and
writes its files there (kept by `--overwrite`). Rank 0 alone reports.
"""

from __future__ import annotations

import importlib
import logging
import sys

from .callbacks import TrainingCallback

logger = logging.getLogger(__name__)

TRACKERS = ("wandb", "swanlab")


def tracker_names(report_to: str | None) -> list[str]:
    """The trackers of a `report_to` value ("wandb,swanlab"); ValueError for one mlx-lm does
    not support or that is not installed."""
    names = [n.strip().lower() for n in (report_to or "").split(",") if n.strip()]
    for name in names:
        if name not in TRACKERS:
            raise ValueError(
                f"--report-to {report_to}: {name!r} is not a tracker mlx-lm reports to; "
                f"choose {' or '.join(TRACKERS)} (comma-separated for several)"
            )
        try:
            importlib.import_module(name)
        except ImportError:
            raise ValueError(
                f"--report-to {report_to}: {name} is not installed; pip install {name}"
                + (" (or pip install 'mlx_qat[track]')" if name == "wandb" else "")
                + ", or leave out --report-to"
            ) from None
    return names


def flat_metrics(record: dict, prefix: str) -> dict:
    """{prefix/path: value} for every number or boolean in `record`."""
    out = {}
    for k, v in record.items():
        if isinstance(v, dict):
            out.update(flat_metrics(v, f"{prefix}/{k}"))
        elif isinstance(v, (bool, int, float)):
            out[f"{prefix}/{k}"] = v
    return out


class Reporter(TrainingCallback):
    """Sends every metrics.jsonl record to mlx-lm's reporting callback (module header)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.names = tracker_names(cfg.report_to)  # checked before anything is written
        self.callback = None

    def on_train_begin(self, t) -> None:
        from mlx_lm.tuner.callbacks import get_reporting_callbacks

        cfg = self.cfg
        self.callback = get_reporting_callbacks(
            ",".join(self.names), cfg.project_name, str(t.run_dir), cfg.to_dict()
        )

    def on_record(self, record: dict) -> None:
        if self.callback is None or "step" not in record:
            return
        kind = record.get("kind", "record")
        rest = {k: v for k, v in record.items() if k not in ("kind", "step")}
        info = {"iteration": record["step"], **flat_metrics(rest, kind)}
        if kind == "train":
            self.callback.on_train_loss_report(info)
        else:
            self.callback.on_val_loss_report(info)

    def on_train_end(self, t, result: dict) -> None:
        # close the trackers' runs (the next run of a sweep starts its own)
        for name in self.names:
            finish = getattr(sys.modules.get(name), "finish", None)
            if finish is not None:
                finish()
        self.callback = None


def reporter_for(cfg) -> Reporter | None:
    """The reporter of `cfg.report_to` (None when it is not set)."""
    return Reporter(cfg) if cfg.report_to else None
