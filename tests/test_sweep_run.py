"""A trimmed sweep end to end: trunk sharing in real runs, rows, and crash-resume with a real
kill (no finished run repeated, no row lost or duplicated, a torn row never read)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from test_train_fixtures import REPO, tiny_data_dir  # noqa: F401

from mlx_qat.sweep import append_row, load_sweep, plan_trunks, read_rows, run_sweep

TPS = 4 * 32
STEPS = 24


def write_sweep(tmp_path, data_dir, out) -> str:
    doc = {
        "out": str(out),
        "data": str(data_dir),
        "train": {
            "batch_size": 4, "seq_len": 32, "warmup_steps": 2, "lr": 3e-3,
            "eval_every": 0, "eval_batches": 2, "final_eval_batches": 2, "save_every": 0,
            "cache_limit_mb": 256,
        },
        "grids": [
            {"name": "main", "models": ["d2"], "tokens": [STEPS * TPS], "bits": [4],
             "fractions": [0.25, 0.5]},
            {"name": "fusion", "models": ["d2"], "tokens": [STEPS * TPS], "bits": [4],
             "fractions": [0.5], "pipelines": ["classic"]},
        ],
    }  # fmt: skip
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.fixture(scope="module")
def reference(tiny_data_dir, tmp_path_factory):  # noqa: F811
    """The uninterrupted sweep, in process."""
    tmp = tmp_path_factory.mktemp("sweep_ref")
    sweep = load_sweep(write_sweep(tmp, tiny_data_dir, tmp / "ref"))
    return sweep, run_sweep(sweep)


def test_rows_hold_what_the_fit_needs_and_branches_match_independent_runs(reference, tmp_path):
    sweep, rows = reference
    assert sorted(r["name"] for r in rows) == sorted(
        ["d2_D3072_b4_f0.25_fused_s0", "d2_D3072_b4_f0.5_fused_s0",
         "d2_D3072_b4_f0.5_classic_s0", "d2_D3072_b4_f0_fused_s0"]
    )  # fmt: skip
    by = {r["name"]: r for r in rows}
    fp = by["d2_D3072_b4_f0_fused_s0"]
    assert fp["bits"] is None and fp["D_qat"] == 0 and fp["final_loss"] == fp["fp_loss"]
    q = by["d2_D3072_b4_f0.5_fused_s0"]
    assert (q["D"], q["D_fp"], q["D_qat"], q["bits"]) == (3072, 12 * TPS, 12 * TPS, 4)
    assert q["final_loss"] == q["qat_loss"] and q["S"] == pytest.approx(3072 / q["param_bytes"])
    assert q["nominal_bytes"] == q["N"] * 4 / 8 and q["groups"] == ["main"]
    # The branch (from the trunk's step-12 checkpoint) equals the same run trained alone.
    from dataclasses import replace

    from mlx_qat.train import train

    (t,) = plan_trunks(sweep)
    m = next(m for m in t.members if m.point.name == q["name"])
    alone = train(replace(m.config, out=str(tmp_path / "alone"), branch_from=None))
    assert alone["eval"]["qat"]["loss"] == pytest.approx(q["qat_loss"], rel=1e-6)
    assert t.tokens_trained() < t.tokens_independent()


def test_rerun_skips_finished_rows(reference):
    sweep, rows = reference
    assert run_sweep(sweep) == rows  # nothing trained again, nothing appended


def test_torn_row_is_never_read_and_is_cut_before_the_next(tmp_path):
    path = tmp_path / "results.jsonl"
    append_row(path, {"name": "a", "x": 1})
    with open(path, "ab") as f:
        f.write(b'{"name": "b", "x"')  # a writer killed mid-row
    assert read_rows(path) == [{"name": "a", "x": 1}]
    append_row(path, {"name": "c", "x": 3})
    assert [r["name"] for r in read_rows(path)] == ["a", "c"]
    assert path.read_text().count("\n") == 2


def test_killed_sweep_resumes_without_repeating_or_losing_rows(reference, tmp_path):
    _, ref_rows = reference
    sweep_dir = tmp_path / "killed"
    spec = write_sweep(tmp_path, load_sweep_data(reference), sweep_dir)
    cmd = [sys.executable, "-m", "mlx_qat", "sweep", spec]
    env = {**os.environ, "MLX_QAT_NO_OPENBLAS": os.environ.get("MLX_QAT_NO_OPENBLAS", "")}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    results = sweep_dir / "results.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if results.is_file() and results.read_text().count("\n") >= 1:
            break  # one run finished: the next one is training now
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_rows = read_rows(results)
    print(f"killed after {len(killed_rows)} row(s): {[r['name'] for r in killed_rows]}")
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    rows = read_rows(results)
    names = [r["name"] for r in rows]
    assert len(names) == len(set(names)) == len(ref_rows)  # none lost, none duplicated
    assert rows[: len(killed_rows)] == killed_rows  # finished rows kept as they were
    ref = {r["name"]: r for r in ref_rows}
    for r in rows:  # resumed runs continue exactly: the same losses as uninterrupted
        assert r["final_loss"] == pytest.approx(ref[r["name"]]["final_loss"], rel=1e-6)
    started = [ln for ln in again.stdout.splitlines() if ln.endswith(": training")]
    assert not {ln.split("] ")[1].split(":")[0] for ln in started} & {
        r["name"] for r in killed_rows
    }  # no finished run trained again


def test_jobs_2_gives_the_rows_of_one_process_and_runs_again(reference, tmp_path):
    """`--jobs 2` trains each run in its own `mlx_qat train` process, two at a time: the rows
    of the in-process sweep, nothing written into the run directories but the runs, and a
    second invocation (and a folder an older sweep left with its sweep_run.yaml) runs too."""
    _, ref_rows = reference
    out = tmp_path / "jobs"
    spec = write_sweep(tmp_path, load_sweep_data(reference), out)
    trunk = out / "runs" / "d2_D3072_b4_f0_fused_s0"
    trunk.mkdir(parents=True)
    (trunk / "sweep_run.yaml").write_text("# what an older sweep --jobs N left here\n")
    cmd = [sys.executable, "-m", "mlx_qat", "sweep", spec, "--jobs", "2"]
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    rows = read_rows(out / "results.jsonl")
    ref = {r["name"]: r for r in ref_rows}
    assert sorted(r["name"] for r in rows) == sorted(ref)
    for r in rows:
        assert r["final_loss"] == pytest.approx(ref[r["name"]]["final_loss"], rel=1e-6)
        # the progress line says the row's loss (an FP run's float loss, not its PTQ loss)
        assert f"{r['name']}: done, loss {r['final_loss']:.4f} " in first.stdout
    assert not list(out.rglob("sweep_run.yaml"))
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "training" not in again.stdout and read_rows(out / "results.jsonl") == rows


def test_a_second_sweep_on_a_folder_is_refused_and_a_dead_ones_lock_is_taken_over(
    reference, tmp_path
):
    """Two sweeps on one folder: the second is refused, naming the first's PID (else both
    train and append every run); once the first is killed, the next takes its lock over,
    says so, and writes each row once."""
    _, ref_rows = reference
    out = tmp_path / "locked"
    spec = write_sweep(tmp_path, load_sweep_data(reference), out)
    cmd = [sys.executable, "-m", "mlx_qat", "sweep", spec]
    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        lock, deadline = out / "sweep.lock", time.time() + 120
        while time.time() < deadline and not (lock.is_file() and lock.read_text()):
            assert first.poll() is None, first.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        first.send_signal(signal.SIGSTOP)  # the first sweep holds the folder, mid-sweep
        pid = json.loads(lock.read_text())["pid"]
        second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert second.returncode == 1
        err = second.stderr.strip().splitlines()[-1]
        assert err.startswith(f"mlx_qat.sweep: error: {out}: another sweep is writing this folder")
        assert f"PID {pid} on " in err and f"(kill {pid})" in err
    finally:
        first.kill()  # a stopped process dies of SIGKILL too
        first.wait()
    third = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr[-2000:]
    assert f"{out}: taking over the lock of PID {pid} on " in third.stderr
    names = [r["name"] for r in read_rows(out / "results.jsonl")]
    assert sorted(names) == sorted(r["name"] for r in ref_rows)  # each once
    assert lock.read_text() == ""  # released


def test_a_folder_holding_another_sweep_is_refused_before_anything_is_written(
    reference, tmp_path, capsys
):
    """A sweep file with other shared settings pointed at a sweep's folder is refused, naming
    the folder's grid.yaml and what differs, and leaves the folder's files as they were; the
    same study with a changed grid continues there."""
    from mlx_qat.cli.sweep import main as sweep_main

    out = tmp_path / "study"
    doc = yaml.safe_load(open(write_sweep(tmp_path, load_sweep_data(reference), out)))
    doc["fp_anchor"] = False
    doc["grids"] = [
        {"name": "one", "models": ["d2"], "tokens": [8 * TPS], "bits": [4], "fractions": [0.5]}
    ]
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(doc))
    assert sweep_main([str(good), "--quiet"]) == 0
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**doc, "train": {**doc["train"], "lr": 1e-3}}))
    capsys.readouterr()
    for extra in ([], ["--shard", "0/1"], ["--dry-run"]):
        assert sweep_main([str(other), "--quiet", *extra]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith(
            f"mlx_qat.sweep: error: {out} holds another sweep ({out / 'grid.yaml'}"
        )
        assert "train: lr: 0.003 there, 0.001 here" in err and f"Give {other} its own out:" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files
    more = tmp_path / "more.yaml"  # the same study, one run more: continues in the folder
    more.write_text(
        yaml.safe_dump({**doc, "grids": [{**doc["grids"][0], "fractions": [0.25, 0.5]}]})
    )
    assert sweep_main([str(more), "--dry-run"]) == 0
    assert "2 runs in 1 trunks (1 done, 1 to run)" in capsys.readouterr().out


def test_rows_carry_their_data_and_a_folder_of_other_data_is_refused(
    tiny_data_dir,  # noqa: F811
    tmp_path,
    capsys,
):
    """Rows record the data's identity (shards key, tokenizer sha256); other text prepared at
    the same path with the same vocabulary is refused by a sweep continuing that folder, and
    `fit` refuses to mix the two folders' rows unless told to (--mix-data)."""
    from test_train_fixtures import CORPUS

    from mlx_qat.cli.data import main as data_main
    from mlx_qat.cli.fit import main as fit_main
    from mlx_qat.cli.sweep import main as sweep_main
    from mlx_qat.data import load_bundle

    data, tok = tmp_path / "data", load_bundle(tiny_data_dir).tokenizer_dir

    def prepare(name: str) -> dict:
        args = ["--input", str(CORPUS / name), "--out", str(data), "--tokenizer", str(tok)]
        assert data_main([*args, "--val-fraction", "0.2", "--quiet"]) == 0
        return load_bundle(data).identity

    def sweep(name: str, fractions: list) -> str:
        doc = yaml.safe_load(open(write_sweep(tmp_path, data, tmp_path / name)))
        grid = {"name": "one", "models": ["d2"], "tokens": [8 * TPS], "bits": [4]}
        doc.update(fp_anchor=False, grids=[{**grid, "fractions": fractions}])
        path = tmp_path / f"{name}-{len(fractions)}.yaml"
        path.write_text(yaml.safe_dump(doc))
        return str(path)

    milton = prepare("milton.txt.gz")
    assert sweep_main([sweep("a", [0.5]), "--quiet"]) == 0
    (row,) = read_rows(tmp_path / "a" / "results.jsonl")
    assert row["data"] == milton and milton["shards_key"] and milton["tokenizer_sha256"]
    austen = prepare("austen.txt.gz")  # other text, same path, same vocabulary
    assert austen["shards_key"] != milton["shards_key"]
    capsys.readouterr()
    assert sweep_main([sweep("a", [0.25, 0.5]), "--quiet"]) == 1  # continue folder a: refused
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mlx_qat.sweep: error: {tmp_path / 'a' / 'results.jsonl'}: its rows")
    assert milton["shards_key"][:16] in err and austen["shards_key"][:16] in err
    assert len(read_rows(tmp_path / "a" / "results.jsonl")) == 1
    assert sweep_main([sweep("b", [0.5]), "--quiet"]) == 0  # the new text in its own folder
    assert fit_main([str(tmp_path / "a"), str(tmp_path / "b"), "--no-plot"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("mlx_qat.fit: error: the rows come from 2 data sets") and "\n" not in err
    assert f"{tmp_path / 'b' / 'results.jsonl'} (1 rows)" in err and "pass --mix-data" in err


def load_sweep_data(reference) -> str:
    return reference[0].data


def test_results_rows_are_json_lines(reference):
    sweep, _ = reference
    for line in (sweep.out / "results.jsonl").read_text().splitlines():
        assert json.loads(line)["config_hash"]
