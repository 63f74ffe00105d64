"""convert's output (mlx_qat.convert.write): what --force may replace, outputs that
overlap inputs or the working directory, a kill during the parity check, stale temporaries,
unwritable outputs."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_convert_fixtures import REPO, small_shards

from mlx_qat.cli.convert import main
from mlx_qat.convert import ConvertError, ParityError, convert


@pytest.fixture
def run(tmp_path, runs):
    return runs.make(tmp_path / "run", steps=1)


def tree(path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


# ---- --force replaces only a model directory --------------------------------------------


def test_force_refuses_a_folder_that_is_not_a_model_dir(run, tmp_path):
    user = tmp_path / "notes"
    (user / "sub").mkdir(parents=True)
    (user / "thesis.tex").write_text("years of work")
    (user / "sub" / "data.csv").write_text("1,2")
    (user / "config.json").write_text("{}")  # even with a config.json
    before = tree(user)
    with pytest.raises(ConvertError, match=r"--force replaces only a model directory.*sub/"):
        convert(run.path, user, force=True, parity_check=False)
    assert tree(user) == before
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ConvertError, match=r"a_file.*a file, not a model directory"):
        convert(run.path, tmp_path / "a_file", force=True, parity_check=False)
    assert (tmp_path / "a_file").read_text() == "x"
    (tmp_path / "link").symlink_to(user)
    with pytest.raises(ConvertError, match=r"link.*symbolic link"):
        convert(run.path, tmp_path / "link", force=True, parity_check=False)
    assert tree(user) == before


def test_force_refuses_a_model_dir_with_extra_files(run, tmp_path):
    out = tmp_path / "out"
    convert(run.path, out, parity_check=False)
    (out / "my_script.py").write_text("print('mine')")  # code: an export never writes it
    with pytest.raises(ConvertError, match=r"holds my_script.py, which no model export"):
        convert(run.path, out, force=True, parity_check=False)
    assert (out / "my_script.py").exists()


def test_force_replaces_a_previous_export_or_an_mlx_lm_dir(run, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert main([str(run.path), "--mlx-path", str(out), "--no-parity-check", "--quiet"]) == 0
    assert (out / "convert.yaml").exists()  # everything the command writes is replaceable
    (out / ".DS_Store").write_bytes(b"\0")
    with monkeypatch.context() as m:
        small_shards(m, 20_000)
        sharded = convert(run.path, out, force=True)
    assert len(sharded.files) > 1 and not (out / ".DS_Store").exists()
    again = convert(run.path, out, force=True, parity_batches=1)
    assert again.parity["passed"] and list(again.files) == ["model.safetensors"]
    # What mlx_lm.convert writes (weights, index, config, tokenizer, README) is replaceable.
    lm = tmp_path / "lm"
    lm.mkdir()
    for name in ("config.json", "model.safetensors", "model.safetensors.index.json"):
        (lm / name).write_text("{}")
    for name in ("tokenizer.json", "tokenizer_config.json", "README.md", "chat_template.jinja"):
        (lm / name).write_text("{}")
    convert(run.path, lm, force=True, parity_check=False)
    assert json.loads((lm / "config.json").read_text())["quantization"]["bits"] == 4


def test_force_keeps_the_old_output_until_the_new_one_passes(run, tmp_path, monkeypatch):
    import mlx_qat.convert.pack as pack

    out = tmp_path / "out"
    convert(run.path, out, parity_batches=1)
    before = tree(out)
    cast = pack.cast_model

    def wrong_grid(model, dtype, scale_dtype=None):
        cast(model, dtype, scale_dtype)
        layer = model.model.layers[0].mlp.down_proj
        layer.scales = layer.scales * 1.5

    monkeypatch.setattr(pack, "cast_model", wrong_grid)
    with pytest.raises(ParityError):
        convert(run.path, out, force=True, parity_batches=1)
    assert tree(out) == before and not list(tmp_path.glob("out.*"))


def test_output_never_overlaps_an_input_or_the_working_directory(
    run, tmp_path, tiny_data, monkeypatch
):
    data_dir = tiny_data.path.parent  # the prepared data dir (shards + tokenizer)
    before = tree(data_dir)
    for target in (data_dir, tiny_data.path, data_dir.parent):
        with pytest.raises(ConvertError, match=r"overlaps (--parity-data|the parity data)"):
            convert(run.path, target, force=True, parity_data=data_dir, parity_batches=1)
    # The run's own data is the parity data by default: refused as well.
    with pytest.raises(ConvertError, match=r"--force replaces only a model directory"):
        convert(run.path, data_dir, force=True, parity_batches=1)
    with pytest.raises(ConvertError, match=r"overlaps the parity data"):
        convert(run.path, tiny_data.path / "export", parity_batches=1)
    assert tree(data_dir) == before
    with pytest.raises(ConvertError, match=r"overlaps the tokenizer"):
        convert(run.path, run.path / "tokenizer" / "export", parity_check=False)
    for target in (run.path, run.checkpoint, run.checkpoint / "export", tmp_path):
        with pytest.raises(ConvertError, match=r"overlaps the input"):
            convert(run.path, target, force=True, parity_check=False)
    with pytest.raises(ConvertError, match=r"overlaps the input|replaces only a model dir"):
        convert(run.path, run.path / "checkpoints", force=True, parity_check=False)
    # Inside the run (beside its checkpoints) is fine: the documented layout.
    convert(run.path, run.path / "mlx_model", parity_check=False)

    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("x")
    monkeypatch.chdir(work)
    for target in (work, ".", "", tmp_path, "/"):
        with pytest.raises(ConvertError, match=r"is (the current directory|a parent of)"):
            convert(run.path, target, force=True, parity_check=False)
    assert (work / "keep.txt").read_text() == "x"


def test_cli_mlx_path_dot_is_a_clear_error(run, tmp_path, monkeypatch, capsys):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert main([str(run.path), "--mlx-path", ".", "--force", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--mlx-path . is the current directory" in err and "e.g. --mlx-path mlx_model" in err
    assert "empty name" not in err and len(err.strip().splitlines()) == 1


# ---- a kill during the parity check, stale temporaries -----------------------------------

# Converts, and sleeps once the parity check has loaded the exported model: the parent kills it
# there. (mlx-lm's `load_model` is what both `mlx_lm.load` and the staged check call.)
KILLED = textwrap.dedent(
    """
    import sys, time
    import mlx_lm.utils

    real = mlx_lm.utils.load_model

    def slow_load_model(*args, **kwargs):
        out = real(*args, **kwargs)
        print("PARITY", flush=True)
        time.sleep(600)
        return out

    mlx_lm.utils.load_model = slow_load_model
    from mlx_qat.convert import convert
    convert(sys.argv[1], sys.argv[2], parity_batches=1)
    """
)


def test_kill_during_parity_leaves_nothing_loadable_and_next_run_cleans(run, tmp_path):
    from mlx_lm import load

    out = tmp_path / "out"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED, str(run.path), str(out)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert child.stdout.readline().strip() == "PARITY", "convert ended before its parity check"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    staged = tmp_path / f"out.tmp-{child.pid}"
    names = {p.name for p in staged.iterdir()}
    assert "config.json" not in names and not out.exists()
    assert {"model.safetensors", "tokenizer.json", "config.unverified.json"} <= names
    with pytest.raises(Exception):  # noqa: B017 - mlx_lm raises FileNotFoundError
        load(str(staged))  # an unverified export is not loadable

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        busy = tmp_path / f"out.tmp-{sleeper.pid}"  # a convert that still runs: left alone
        busy.mkdir()
        result = convert(run.path, out, parity_batches=1)
        assert result.parity["passed"] and (out / "config.json").exists()
        assert not staged.exists() and busy.exists()
    finally:
        sleeper.kill()
        sleeper.wait(timeout=60)


def test_stale_temporaries_are_cleaned_only_when_safe(run, tmp_path, caplog):
    from mlx_qat.convert.write import clean_stale

    caplog.set_level(logging.WARNING, logger="mlx_qat")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=60)
    out = tmp_path / "out"
    odd = tmp_path / f"out.tmp-{dead.pid}"
    odd.mkdir()
    (odd / "notes.txt").write_text("not ours")
    old = tmp_path / f"out.old-{dead.pid}"
    convert(run.path, old, parity_check=False)  # an interrupted replace: the previous output
    assert clean_stale(out) == [] and odd.exists() and old.exists()
    assert "previous output of an interrupted convert" in caplog.text
    convert(run.path, out, parity_check=False)
    assert not old.exists() and odd.exists()  # superseded now; a foreign file is never removed


# ---- unwritable outputs ------------------------------------------------------------------


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory this process cannot write in: chmod 555, or for root (who writes anyway)
    a read-only system directory."""
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        yield ro
        ro.chmod(0o755)
        return
    for candidate in ("/proc/sys", "/sys"):
        if os.path.isdir(candidate) and not os.access(candidate, os.W_OK):
            yield Path(candidate)
            return
    pytest.skip("running as root and no read-only directory found")


def test_read_only_output_dir_is_a_one_line_error(run, read_only_dir, capsys):
    out = read_only_dir / "mlx_qat_test_out"
    assert main([str(run.path), "--mlx-path", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"--mlx-path {out}: cannot write in {read_only_dir}" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_write_error_while_exporting_is_a_one_line_error(run, tmp_path, monkeypatch, capsys):
    import mlx_qat.convert.api as api

    def denied(path, *args, **kwargs):
        name = str(path / "model.safetensors")
        raise PermissionError(errno.EACCES, "Permission denied", name)

    monkeypatch.setattr(api, "save_weights", denied)
    out = tmp_path / "out"
    assert main([str(run.path), "--mlx-path", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"--mlx-path {out}: cannot write the export (Permission denied" in err
    assert "writable directory" in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("out*"))


def test_yaml_that_is_not_a_mapping_is_a_usage_error(run, tmp_path, capsys):
    cfg = tmp_path / "convert.yaml"
    cfg.write_text("- mlx_path: out\n- force: true\n")
    with pytest.raises(SystemExit) as err:
        main([str(run.path), "--config", str(cfg)])
    assert err.value.code == 2
    msg = capsys.readouterr().err
    assert "must hold a mapping" in msg and "Traceback" not in msg
