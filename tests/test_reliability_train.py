"""Issue 12, the trainer: `--branch-from` never overwrites a run (2), a resume checks the
data's tokenizer (4), bad settings are one-line errors before anything is written (9), the
divergence advice works, paths are hashed by meaning, and a copied run resumes itself (11)."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import mlx.core as mx
import pytest
from test_train_fixtures import CORPUS, readonly_dir, tiny_config, tiny_data_dir  # noqa: F401

from mlx_qat.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from mlx_qat.cli import train as train_cli
from mlx_qat.train import Trainer, TrainingDiverged, train
from mlx_qat.train.metrics import read_metrics

SHORT = dict(tokens=8 * 4 * 32, save_every=4)  # 8 steps: FP 0..5, QAT 6..7; saves 4, 6, 8


def snapshot(run: Path) -> dict:
    """Every file under `run` with its sha256."""
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file()
    }


def cli(argv, capsys) -> tuple[int, str]:
    rc = train_cli.main([str(a) for a in argv])
    return rc, capsys.readouterr().err


# --- 2: --branch-from into an existing run ----------------------------------------------------


def test_branch_from_refuses_a_directory_holding_a_run(tiny_data_dir, tmp_path):  # noqa: F811
    src = tmp_path / "src"
    train(tiny_config(tiny_data_dir, src, **SHORT))
    victim = tmp_path / "victim"
    train(tiny_config(tiny_data_dir, victim, **SHORT, seed=1))
    before = snapshot(victim)
    branch = tiny_config(
        tiny_data_dir, victim, **SHORT, branch_from=str(src / "checkpoints" / "step_00000004")
    )
    with pytest.raises(ValueError, match=r"already holds a run.*would overwrite it.*--overwrite"):
        train(branch)
    assert snapshot(victim) == before
    # Asked explicitly: the old run is replaced by the branch (its metrics start at step 5).
    train(replace(branch, overwrite=True))
    assert [r["step"] for r in read_metrics(victim, "train")] == [5, 6, 7, 8]
    # A folder with a user's files is never a run directory, --overwrite or not.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    for kw in ({}, {"overwrite": True}):
        with pytest.raises(ValueError, match=r"not a training run's \(notes.txt\)"):
            train(replace(branch, out=str(mine), **kw))
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


# --- 4: resume checks the data's tokenizer ----------------------------------------------------


def test_resume_with_data_of_another_tokenizer_is_refused(tiny_data_dir, tmp_path):  # noqa: F811
    from mlx_qat.data import load_bundle, prepare_data, tokenizer_sha256

    run = tmp_path / "run"
    cfg = tiny_config(tiny_data_dir, run, **SHORT)
    train(cfg)
    other = tmp_path / "other"
    prepare_data(CORPUS, other, vocab_size=400, val_fraction=0.1)
    before = snapshot(run)
    with pytest.raises(CheckpointError, match=r"trained on the token shards.*same --data"):
        Trainer(replace(cfg, data=[str(other)], resume=True)).setup()
    assert snapshot(run) == before
    # A stale tokenizer/ in the run (left by an attempt on other data) is not kept on resume:
    # the run's tokenizer is the one its data (and its checkpoint) was made with.
    shutil.rmtree(run / "tokenizer")
    shutil.copytree(load_bundle(other).tokenizer_dir, run / "tokenizer")
    Trainer(replace(cfg, resume=True)).setup()
    want = load_checkpoint(run).state["tokenizer_sha256"]
    assert want == load_bundle(tiny_data_dir).manifest["tokenizer"]["sha256"]
    assert tokenizer_sha256(run / "tokenizer") == want


# --- 9: bad settings: one line, exit 1 or 2, nothing written ----------------------------------


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--tokens", "-5"], "tokens=-5: must be >= 1"),
        (["--qat-fraction", "1.5"], "qat_fraction='1.5': must be in [0, 1]"),
        (["--log-every", "0"], "log_every=0: must be >= 1"),
        (["--seed", "-1"], "seed=-1: must be in [0, 2**63)"),
        (["--save-every", "-1"], "save_every=-1: must be >= 0"),
        (["--bits", "7"], "bits"),
        (["--seq-len", "1000000", "--batch-size", "1"], "GiB available"),
    ],
)
def test_bad_settings_are_one_line_errors(tiny_data_dir, tmp_path, capsys, flags, message):  # noqa: F811
    out = tmp_path / "run"
    rc, err = cli(["--data", tiny_data_dir, "--out", out, "--quiet", *flags], capsys)
    assert rc == 1 and message in err, err
    assert err.splitlines()[-1].startswith("mlx_qat.train: error: ") and "Traceback" not in err
    assert not out.exists()


def test_unknown_yaml_key_and_read_only_out(tiny_data_dir, tmp_path, capsys, readonly_dir):  # noqa: F811
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 0.01\n")
    with pytest.raises(SystemExit) as e:
        train_cli.main(["--config", str(bad)])
    assert e.value.code == 2 and "unknown setting(s) learning_rate" in capsys.readouterr().err
    out = readonly_dir / "run"
    flags = [
        "--quiet",
        "--tokens",
        "2048",
        "--batch-size",
        "4",
        "--seq-len",
        "32",
        "--qat-fraction",
        "0.5",
    ]
    rc, err = cli(["--data", tiny_data_dir, "--out", out, *flags], capsys)
    assert rc == 1 and f"--out {out}: cannot write there" in err and err.count("\n") == 1, err


def test_step_memory_estimate_is_a_lower_bound_of_the_measured_peak():
    from mlx.utils import tree_flatten

    from mlx_qat.models import model_from_config, preset_config
    from mlx_qat.models.build import qat_config
    from mlx_qat.prepare import prepare
    from mlx_qat.train.config import TrainConfig
    from mlx_qat.train.memory import step_bytes
    from mlx_qat.train.optim import build_optimizer
    from mlx_qat.train.step import make_step

    for b, t in ((4, 64), (1, 1024)):
        cfg = TrainConfig(batch_size=b, seq_len=t)
        mcfg = preset_config("d2", 512)
        model = model_from_config(mcfg)
        prepare(model, qat_config(cfg), enabled=True)
        mx.eval(model.parameters())
        opt = build_optimizer(model, cfg)
        step = make_step(model, opt, 1.0, True)
        mx.reset_peak_memory()
        loss, norm = step([mx.random.randint(0, 512, (b, t + 1))])
        mx.eval(loss, norm, model.state, opt.state)
        pbytes = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
        est = step_bytes(mcfg, pbytes, b, t)["total"]
        assert est <= mx.get_peak_memory() <= 4 * est, (b, t)


# --- 11: the divergence advice is true; paths by meaning; a copied run ------------------------


def test_divergence_advice_resume_with_a_lower_lr_works(tiny_data_dir, tmp_path):  # noqa: F811
    def poison(trainer, step):
        if step == 5:
            w = trainer.model.model.layers[0].mlp.up_proj.weight
            trainer.model.model.layers[0].mlp.up_proj.weight = w * mx.array(float("nan"))

    cfg = tiny_config(tiny_data_dir, tmp_path / "run", **SHORT)
    with pytest.raises(TrainingDiverged, match=r"Lower --lr.*--resume --reschedule") as e:
        train(cfg, on_step=poison)
    assert "step_00000004" in str(e.value)
    lower = replace(cfg, lr=cfg.lr / 3, resume=True)
    with pytest.raises(
        CheckpointError, match=r"another schedule \(lr 0.003 -> 0.001.*--reschedule"
    ):
        Trainer(lower).setup()
    result = train(replace(lower, reschedule=True))
    assert result["steps"] == 8
    (note,) = read_metrics(tmp_path / "run", "reschedule")
    assert note["step"] == 4 and note["changed"] == {"lr": [cfg.lr, cfg.lr / 3]}
    lrs = [r["lr"] for r in read_metrics(tmp_path / "run", "train")]
    assert len(lrs) == 8 and max(lrs[4:]) <= cfg.lr / 3 + 1e-12
    # Other changes still need a new run, with or without --reschedule.
    with pytest.raises(CheckpointError, match="config hash"):
        Trainer(replace(lower, reschedule=True, seed=5)).setup()
    assert train_cli.parse_args(["--resume", "--reschedule"]).reschedule


def test_resume_ignores_how_the_data_path_is_spelt(tiny_data_dir, tmp_path, monkeypatch):  # noqa: F811
    cfg = tiny_config(tiny_data_dir, tmp_path / "run", **SHORT)
    train(cfg)
    monkeypatch.chdir(tiny_data_dir.parent)
    for spelling in (f"{tiny_data_dir}/", f"./{tiny_data_dir.name}", f"{tiny_data_dir.name}/."):
        t = Trainer(replace(cfg, data=[spelling], resume=True))
        t.setup()  # was: "saved with config hash ..., but this config hashes to ..."
        assert t.step == 8
        t.metrics.close()


def test_a_copied_run_resumes_itself_not_the_original(tiny_data_dir, tmp_path, capsys):  # noqa: F811
    orig = tmp_path / "orig"
    train(tiny_config(tiny_data_dir, orig, **SHORT))
    copy = tmp_path / "copy"
    shutil.copytree(orig, copy)
    before = snapshot(orig)
    rc, err = cli(["--config", copy / "config.yaml", "--resume", "--eval-every", "3"], capsys)
    assert rc == 1 and f"is the config of the run in {copy}, but its out: is {orig}" in err, err
    assert f"--out {copy}" in err
    rc, err = cli(["--config", copy / "config.yaml", "--resume", "--out", copy], capsys)
    assert rc == 0, err
    assert snapshot(orig) == before
    assert json.loads((copy / "result.json").read_text())["run_dir"] == str(copy)
    assert [s for s, _ in list_checkpoints(copy)] == [s for s, _ in list_checkpoints(orig)]
    assert load_checkpoint(copy).step == 8
