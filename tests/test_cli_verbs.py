"""Every verb the same way: `--config` YAML under the flags (CLI > YAML > defaults), unknown
keys refused by name, YAML values coerced to the flag's type, the resolved settings written
next to the output and fed back unchanged; one flag name per concept (a renamed flag read under
its old spelling, on the command line and in YAML), and `--help` with every choice and each
flag's real default once."""

from __future__ import annotations

import argparse
import inspect
import json
import re

import pytest
import yaml
from test_train_fixtures import CORPUS, tiny_config, tiny_data_dir  # noqa: F401

from mlx_qat.cli import check, convert, data, diagnose, eval, fit, plan, sweep, train
from mlx_qat.cli.common import CONFIGS, resolve
from mlx_qat.data.tokenizer import DEFAULT_VOCAB_SIZE
from mlx_qat.train.config import TrainConfig

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


# --- one vocabulary: one flag name per concept, --help with choices and real defaults ----------

# Old spelling -> the spelling every verb now uses (the old one is read for one release).
RENAMED = {"--q-bits": "--bits", "--q-group-size": "--group-size", "--q-mode": "--mode"}
RENAMED |= {"--plots": "--plot", "--no-plots": "--no-plot"}


def visible_flags(parser) -> set[str]:
    return {s for a in parser._actions if a.help != argparse.SUPPRESS for s in a.option_strings}


def test_one_flag_name_per_concept_across_verbs():
    flags = {verb: visible_flags(mod.build_parser()) for verb, mod in VERBS.items()}
    for verb, shown in flags.items():
        assert not shown & set(RENAMED), verb  # an old spelling is never listed
        assert not {f for f in shown if f.startswith("--q-")}, verb
    for verb in ("train", "plan", "convert", "diagnose"):
        assert {"--bits", "--group-size", "--mode"} <= flags[verb], verb
    for verb in ("train", "fit", "diagnose"):
        assert {"--plot", "--no-plot"} <= flags[verb], verb


@pytest.mark.parametrize(
    "verb, old, new, dest, value",
    [
        ("train", ["--q-mode", "mxfp4"], ["--mode", "mxfp4"], "q_mode", "mxfp4"),
        ("plan", ["--q-mode", "mxfp4"], ["--mode", "mxfp4"], "q_mode", "mxfp4"),
        ("convert", ["--q-bits", "3"], ["--bits", "3"], "bits", 3),
        ("convert", ["--q-group-size=32"], ["--group-size=32"], "group_size", 32),
        ("convert", ["--q-mode", "mxfp4"], ["--mode", "mxfp4"], "mode", "mxfp4"),
        ("fit", ["--no-plots"], ["--no-plot"], "plot", False),
    ],
)
def test_a_renamed_flag_sets_the_same_setting(verb, old, new, dest, value, capsys):
    parser = VERBS[verb].build_parser()
    assert resolve(parser, old)[dest] == resolve(parser, new)[dest] == value
    err = capsys.readouterr().err
    flag = old[0].split("=")[0]
    assert f"mlx_qat.{verb}: warning: {flag} is now spelt {RENAMED[flag]}" in err
    assert err.count("warning") == 1  # the old spelling warns, the new one does not


@pytest.mark.parametrize(
    "verb, old, new, dest, value",
    [
        ("convert", {"q_bits": 3}, {"bits": 3}, "bits", 3),
        ("convert", {"q_mode": "mxfp4"}, {"mode": "mxfp4"}, "mode", "mxfp4"),
        ("fit", {"plots": False}, {"plot": False}, "plot", False),
        ("diagnose", {"no_plot": True}, {"plot": False}, "plot", False),  # --no-plot was a switch
        ("diagnose", {"no_plot": False}, {"plot": True}, "plot", True),
    ],
)
def test_a_renamed_yaml_key_sets_the_same_setting(verb, old, new, dest, value, tmp_path, capsys):
    parser = VERBS[verb].build_parser()
    a, b = write_yaml(tmp_path / "old.yaml", old), write_yaml(tmp_path / "new.yaml", new)
    assert resolve(parser, ["--config", a])[dest] == resolve(parser, ["--config", b])[dest] == value


def test_train_mode_keeps_its_field_name_and_hash(tmp_path, capsys):
    # `--mode` is the flag of TrainConfig.q_mode: config.yaml and the hash of a run keep q_mode
    by_flag = train.parse_args(["--mode", "mxfp4", "--bits", "4"])
    by_old_flag = train.parse_args(["--q-mode", "mxfp4", "--bits", "4"])
    for key in ("mode", "q_mode", "q-mode"):
        cfg = train.parse_args(["--config", write_yaml(tmp_path / "m.yaml", {key: "mxfp4"})])
        assert cfg == by_flag == by_old_flag, key
    assert TrainConfig.from_dict({"mode": "mxfp4"}) == TrainConfig(q_mode="mxfp4")
    saved = yaml.safe_load(by_flag.to_yaml())
    assert saved["q_mode"] == "mxfp4" and "mode" not in saved
    # the hash such a config had before the flag was renamed
    assert by_flag.hash() == TrainConfig(q_mode="mxfp4").hash() == "1447c149b42cab34"
    both = write_yaml(tmp_path / "both.yaml", {"q_mode": "mxfp4", "mode": "affine"})
    with pytest.raises(ValueError, match="(q_mode and mode|mode and q_mode) are the same setting"):
        train.parse_args(["--config", both])
    with pytest.raises(ValueError, match="q_mode and mode are the same setting"):
        TrainConfig.from_dict({"q_mode": "mxfp4", "mode": "affine"})


def expanded_help(parser) -> dict[str, str]:
    """Each listed flag's help text as --help prints it (defaults filled in)."""
    fmt = parser._get_formatter()
    return {
        (a.option_strings or [a.dest])[0]: " ".join(fmt._expand_help(a).split())
        for a in parser._actions
        if a.help not in (None, argparse.SUPPRESS)
    }


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_help_lists_choices_and_one_real_default(verb):
    parser = VERBS[verb].build_parser()
    text = parser.format_help()
    for a in parser._actions:
        if a.choices and a.help != argparse.SUPPRESS:
            assert "{" + ",".join(map(str, a.choices)) + "}" in text, a.option_strings
    for flag, h in expanded_help(parser).items():
        assert "(default: None)" not in h and "(default: [])" not in h, (flag, h)
        assert len(re.findall(r"\(default|default:", h)) <= 1, (flag, h)


def test_help_shows_what_the_defaults_are(capsys):
    # --help as the verb prints it: while the command line is parsed (every flag from None)
    for verb in ("data", "train"):
        with pytest.raises(SystemExit):
            VERBS[verb].main(["--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert f"(default: {DEFAULT_VOCAB_SIZE})" in out and "(default: None)" not in out
    train_help = " ".join(train.build_parser().format_help().split())
    for shown in (
        "--quantizer {minmax,lsq,learned_affine}",
        "--train {all,grid}",
        "--objective {ce,kd,mix}",
        "--mode {affine,mxfp4,nvfp4,mxfp8}",
    ):
        assert shown in train_help
    data_help = expanded_help(data.build_parser())
    assert data_help["--vocab-size"].endswith(f"(default: {DEFAULT_VOCAB_SIZE})")
    assert data_help["--out"].endswith("(default: data)")
    assert "default" not in data_help["--tokenizer"]  # None: nothing to show
    train_help = expanded_help(train.build_parser())
    assert train_help["--vocab-size"].endswith(f"(default: {DEFAULT_VOCAB_SIZE})")
    assert train_help["--lr"].endswith("(default: 0.003; with --model: 1e-4)")
    assert train_help["--embed-bits"].endswith("(default: max(bits, 4))")
    assert expanded_help(diagnose.build_parser())["--eval-batches"].endswith("(default: 4)")


def test_train_help_is_in_titled_sections_in_order():
    text = train.build_parser().format_help()
    starts = [text.index(f"\n{title}:\n") for title in train.GROUPS.values()]
    assert starts == sorted(starts)
    for key in ("dist_timeout", "compile", "cache_limit_mb"):
        assert train.TrainConfig.__dataclass_fields__[key].metadata["group"] == "distributed"
    assert "\nother:\n" not in text and "\nqat:\n" not in text  # every section has its title


def test_plan_takes_only_what_planning_reads(tmp_path, capsys):
    parser = plan.build_parser()
    shown = visible_flags(parser)
    assert {train.flag_of(f) for f in train.PLAN_FIELDS} <= shown
    for flag in ("--resume", "--fp-twin", "--out", "--objective", "--compile", "--plot"):
        assert flag not in shown
        assert flag in visible_flags(train.build_parser())
    with pytest.raises(SystemExit) as e:
        plan.main(["--resume"])
    assert e.value.code == 2 and "unrecognized arguments: --resume" in capsys.readouterr().err
    # a whole training config still plans, and --save passes its other settings through
    assert plan.main(["--config", "main", "--tokens", "1e6", "--save", str(tmp_path)]) == 0
    saved = train.parse_args(["--config", str(tmp_path / "config.yaml")])
    assert saved.fp_twin is True and saved.quantizer == "learned_affine"
    assert saved.tokens == 1_000_000


def test_one_default_vocabulary_size():
    from mlx_qat.data import prepare_data, train_tokenizer

    def default_of(fn):
        return inspect.signature(fn).parameters["vocab_size"].default

    data_default = data.build_parser().get_default("vocab_size")
    assert data_default == TrainConfig().vocab_size == DEFAULT_VOCAB_SIZE
    assert default_of(prepare_data) == default_of(train_tokenizer) == DEFAULT_VOCAB_SIZE
    # the main job states its own (scripts/main.sh passes it to mlx_qat.data too)
    main = yaml.safe_load((CONFIGS / "main.yaml").read_text())
    assert main["vocab_size"] == 1024
