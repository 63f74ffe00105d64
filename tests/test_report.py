"""`--report-to` (mlx_qat/train/report.py): metrics.jsonl's records, sent to a tracker through
mlx-lm's reporting callbacks, read back from wandb's offline run file; a missing tracker is a
clear error before anything is written."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

from test_train_fixtures import tiny_config, tiny_data_dir  # noqa: F401

from mlx_qat.cli import main as cli_main
from mlx_qat.train.metrics import read_metrics


def wandb_records(run_file: Path):
    """The `wandb_internal_pb2.Record` messages of a wandb run file (`run-<id>.wandb`:
    LevelDB's log format — 32 KiB blocks of records, each a 7-byte header (crc32, length,
    type: 1 full, 2 first, 3 middle, 4 last) — after a 7-byte file header ":W&B", 0xBEE1,
    version)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    ident, magic, _ = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1)
    pos, block, part = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header: padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        part += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            break
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(part)
            part = b""
            yield rec


def wandb_history(run_file: Path) -> dict[int, dict]:
    """{step: {key: value}} of the history records in a wandb run file."""
    out: dict[int, dict] = {}
    for rec in wandb_records(run_file):
        if rec.WhichOneof("record_type") == "history":
            row = out.setdefault(rec.history.step.num, {})
            for item in rec.history.item:
                row[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out


def numeric_leaves(d: dict, prefix: str) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(numeric_leaves(v, f"{prefix}/{k}"))
        elif isinstance(v, (int, float)) and k != "step":  # bool is an int
            out[f"{prefix}/{k}"] = v
    return out


def offline_wandb(monkeypatch, tmp_path: Path) -> None:
    for k, v in dict(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=str(tmp_path)).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))


def _yaml(cfg, tmp_path: Path) -> str:
    path = tmp_path / "train.yaml"
    path.write_text(cfg.to_yaml(), encoding="utf-8")
    return str(path)


def test_report_to_wandb_logs_what_metrics_jsonl_holds(tiny_data_dir, tmp_path, monkeypatch):  # noqa: F811
    """A run with `--report-to wandb` (offline) leaves one wandb run whose history holds, at
    each record's step, every number of every metrics.jsonl record (train, eval, final and
    test evals, the QAT phase's transition statistics, the basin monitor's records) under
    `kind/path`, and nothing else."""
    import wandb  # noqa: F401  (the `track` extra; scripts/setup.sh installs it)

    offline_wandb(monkeypatch, tmp_path)
    run = tmp_path / "run"
    cfg = tiny_config(tiny_data_dir, run, tokens=16 * 4 * 32, eval_every=4, log_every=2,
                      basin_monitor=True)  # fmt: skip
    argv = ["--config", _yaml(cfg, tmp_path), "--report-to", "wandb", "--project-name", "qat"]
    assert cli_main(["train", *argv]) == 0
    files = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    logged = wandb_history(files[0])
    want: dict[int, dict] = {}
    for rec in read_metrics(run):
        want.setdefault(rec["step"], {"iteration": rec["step"]}).update(
            numeric_leaves(rec, rec["kind"])
        )
    got = {s: {k: v for k, v in row.items() if not k.startswith("_")} for s, row in logged.items()}
    kinds = {k.split("/")[0] for row in got.values() for k in row}
    assert {"train", "eval", "final_eval", "test_eval", "basin_reference"} <= kinds, kinds
    assert any("transition_rate_layers" in k for row in got.values() for k in row)
    assert got == want


def test_a_missing_tracker_names_the_install(tiny_data_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    """`--report-to wandb` without wandb installed: exit 1, the message names `pip install
    wandb`, and nothing was trained or written; an unknown tracker names the supported ones."""
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    run = tmp_path / "run"
    yaml = _yaml(tiny_config(tiny_data_dir, run), tmp_path)
    assert cli_main(["train", "--config", yaml, "--report-to", "wandb"]) == 1
    err = capsys.readouterr().err
    assert "wandb is not installed" in err and "pip install wandb" in err, err
    assert not (run / "metrics.jsonl").exists() and not (run / "checkpoints").exists()
    assert cli_main(["train", "--config", yaml, "--report-to", "tensorboard"]) == 1
    assert "choose wandb or swanlab" in capsys.readouterr().err


def test_a_sweep_reports_each_run_in_the_sweeps_project(tiny_data_dir, tmp_path, monkeypatch):  # noqa: F811
    """`mlx_qat sweep --report-to wandb`: every run of the grid leaves its own offline wandb
    run, in the project named after the sweep folder, holding its final evaluation; the rows'
    config hashes are those of a sweep without reporting."""
    import yaml

    from mlx_qat.sweep import load_sweep, read_rows, sweep_jobs

    offline_wandb(monkeypatch, tmp_path)
    out = tmp_path / "study"
    doc = {
        "out": str(out),
        "data": str(tiny_data_dir),
        "train": {"batch_size": 4, "seq_len": 32, "warmup_steps": 2, "lr": 3e-3,
                  "eval_every": 0, "eval_batches": 2, "final_eval_batches": 2, "save_every": 0,
                  "cache_limit_mb": 256},
        "grids": [{"name": "main", "models": ["d2"], "tokens": [12 * 4 * 32], "bits": [4],
                   "fractions": [0.25, 0.5]}],
    }  # fmt: skip
    spec = tmp_path / "study.yaml"
    spec.write_text(yaml.safe_dump(doc))
    assert cli_main(["sweep", str(spec), "--report-to", "wandb"]) == 0
    rows = read_rows(out / "results.jsonl")
    jobs = sweep_jobs(load_sweep(str(spec)))
    assert sorted(r["config_hash"] for r in rows) == sorted(j.config.hash() for j in jobs)
    assert len(rows) == len(jobs) == 3  # the FP run (f = 0) and the two fractions
    for job in jobs:
        files = list(Path(job.config.out, "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(files) == 1, (job.name, files)
        runs = [r.run for r in wandb_records(files[0]) if r.WhichOneof("record_type") == "run"]
        assert runs and runs[0].project == "study"
        final = read_metrics(job.config.out, "final_eval")[-1]
        logged = wandb_history(files[0])[final["step"]]
        assert logged["final_eval/qat/loss"] == final["qat"]["loss"]
