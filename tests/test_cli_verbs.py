"""Every verb the same way: `--config` YAML under the flags (CLI > YAML > defaults), unknown
keys refused by name, YAML values coerced to the flag's type, the resolved settings written
next to the output and fed back unchanged."""

from __future__ import annotations

import json

import pytest
import yaml
from test_train_fixtures import CORPUS, tiny_config, tiny_data_dir  # noqa: F401

from mlx_qat.cli import check, convert, data, diagnose, eval, fit, plan, sweep, train

VERBS = {
    "data": data,
    "train": train,
    "eval": eval,
    "convert": convert,
    "plan": plan,
    "check": check,
    "sweep": sweep,
    "fit": fit,
    "diagnose": diagnose,
}


def write_yaml(path, mapping) -> str:
    path.write_text(yaml.safe_dump(mapping), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def tiny_run(tiny_data_dir, tmp_path_factory):  # noqa: F811
    from mlx_qat.train import train as run_training

    out = tmp_path_factory.mktemp("verbs") / "run"
    run_training(tiny_config(tiny_data_dir, out, tokens=12 * 4 * 32, quantizer="learned_affine"))
    return out


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_help_and_unknown_yaml_key_named(verb, tmp_path, capsys):
    mod = VERBS[verb]
    assert "--config" in mod.build_parser().format_help()
    bad = write_yaml(tmp_path / "bad.yaml", {"no_such_setting": 1})
    with pytest.raises(SystemExit) as e:
        mod.main(["--config", bad])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"mlx_qat.{verb}: error: --config {bad}: unknown setting(s) no_such_setting" in err


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_yaml_that_is_not_a_mapping_is_named(verb, tmp_path, capsys):
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(SystemExit):
        VERBS[verb].main(["--config", str(bad)])
    assert "must hold a mapping of setting: value, not a list" in capsys.readouterr().err


def test_yaml_numbers_are_coerced_to_the_flag_type(tmp_path):
    # PyYAML reads 1e-3 as the *string* "1e-3": the flag's own type turns it into a float.
    f = write_yaml(tmp_path / "c.yaml", {})
    (tmp_path / "c.yaml").write_text("lr: 1e-3\neps: 1e-8\nweight_decay: 1e-2\ntokens: 3M\n")
    cfg = train.parse_args(["--config", f])
    assert cfg.lr == 1e-3 and cfg.eps == 1e-8 and cfg.weight_decay == 1e-2
    assert isinstance(cfg.lr, float) and cfg.tokens == 3_000_000
    (tmp_path / "c.yaml").write_text("lr: fast\n")
    with pytest.raises(ValueError, match=r"lr: 'fast' is not valid.*--lr"):
        train.parse_args(["--config", f])
    (tmp_path / "c.yaml").write_text("pipeline: quick\n")
    with pytest.raises(ValueError, match=r"pipeline: 'quick' is not one of fused, classic"):
        train.parse_args(["--config", f])
    (tmp_path / "c.yaml").write_text("compile: 3\n")
    with pytest.raises(ValueError, match=r"compile: 3 is not true or false"):
        train.parse_args(["--config", f])


def test_plan_precedence_and_saved_config_trains_the_same_plan(tmp_path, capsys):
    f = write_yaml(tmp_path / "p.yaml", {"bits": 2, "tokens": "2e6", "vocab-size": 512})
    assert plan.main(["--config", f, "--bits", "3", "--json", "--save", str(tmp_path / "p")]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert printed == saved and saved["total_tokens"] == 2_000_000
    cfg = train.parse_args(["--config", str(tmp_path / "p" / "config.yaml")])
    assert cfg.bits == 3 and cfg.tokens == 2_000_000 and cfg.vocab_size == 512
    from mlx_qat.train import plan_for_config

    assert plan_for_config(cfg).to_dict() == saved


def test_data_precedence_and_resolved_config(tmp_path, capsys):
    f = write_yaml(tmp_path / "d.yaml", {"input": str(CORPUS), "vocab_size": 400, "seed": 1})
    out = tmp_path / "data"
    assert data.main(["--config", f, "--seed", "2", "--out", str(out), "--quiet"]) == 0
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["seed"] == 2 and resolved["vocab_size"] == 400
    assert resolved["input"] == [str(CORPUS)] and resolved["val_fraction"] == 0.05


def test_train_precedence_and_resolved_config(tiny_data_dir, tmp_path, capsys):  # noqa: F811
    base = tiny_config(tiny_data_dir, tmp_path / "run", tokens=6 * 4 * 32).to_dict()
    base.update(lr=0.01, seed=3)
    f = write_yaml(tmp_path / "t.yaml", base)
    assert train.main(["--config", f, "--seed", "4"]) == 0
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert resolved["seed"] == 4 and resolved["lr"] == 0.01 and resolved["tokens"] == 6 * 4 * 32
    assert "PTQ gap recovered" in capsys.readouterr().out


def test_eval_precedence_and_resolved_config(tiny_run, tmp_path, capsys):
    f = write_yaml(tmp_path / "e.yaml", {"path": str(tiny_run), "eval_batches": 3, "seq_len": 16})
    out = tmp_path / "ev"
    assert eval.main(["--config", f, "--eval-batches", "1", "--out", str(out)]) == 0
    ev = json.loads((out / "eval.json").read_text())
    assert ev["tokens"] == 1 * 4 * 16  # one batch of the run's 4 sequences of 16 tokens
    resolved = yaml.safe_load((out / "eval.yaml").read_text())
    assert resolved["eval_batches"] == 1 and resolved["seq_len"] == 16
    assert resolved["path"] == str(tiny_run)


def test_convert_precedence_and_resolved_config(tiny_run, tmp_path, capsys):
    f = write_yaml(tmp_path / "c.yaml", {"dtype": "float16", "parity_tolerance": "1e-3"})
    out = tmp_path / "mlx_model"
    assert (
        convert.main([str(tiny_run), "--config", f, "--dtype", "float32", "--mlx-path", str(out)])
        == 0
    )
    resolved = yaml.safe_load((out / "convert.yaml").read_text())
    assert resolved["dtype"] == "float32" and resolved["parity_tolerance"] == 1e-3
    record = json.loads((out / "mlx_qat.json").read_text())
    assert record["dtype"] == "float32"
    assert "rel diff" in capsys.readouterr().out


def test_check_runs_on_this_machine(capsys):
    assert check.main([]) == 0
    assert capsys.readouterr().out.strip()
