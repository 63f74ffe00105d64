"""mlx_qat.train.config: `TrainConfig` in groups (each a dataclass with its fields and checks),
flat attributes, YAML keys and flags; the `--help` sections follow from the groups; the run's
`QATConfig` is built once, when the config is checked, and again only when a quantization
field changes."""

from __future__ import annotations

from dataclasses import fields

import pytest
from test_train_fixtures import tiny_config, tiny_data_dir  # noqa: F401

from mlx_qat.cli import train as cli_train
from mlx_qat.train import Trainer, config_recipe
from mlx_qat.train.config import GROUPS, TrainConfig
from mlx_qat.train.config_recipe import QuantSettings, ScheduleSettings


def test_every_field_is_in_one_group_and_the_help_sections_are_the_groups():
    owner = {}
    for group in GROUPS:
        for f in fields(group):
            assert f.name not in owner, (f.name, owner.get(f.name), group)
            owner[f.name] = group.KEY
    config_fields = fields(TrainConfig)
    assert [f.name for f in config_fields] == list(owner)  # in GROUPS order
    assert all(f.metadata["group"] == owner[f.name] for f in config_fields)
    assert cli_train.GROUPS == {g.KEY: g.TITLE for g in GROUPS}
    text = cli_train.build_parser().format_help()
    for group in GROUPS:
        section = text[text.index(f"\n{group.TITLE}:\n") :]
        assert cli_train.flag_of(fields(group)[0].name) in section.split("\n\n")[0]


def test_a_group_checks_its_fields_and_flat_access_is_kept():
    cfg = TrainConfig(tokens="2M", bits=3, quant_overrides={"lm_head": 8})
    assert cfg.tokens == 2_000_000 and cfg.bits == 3  # flat attributes
    sched = cfg.group(ScheduleSettings)
    assert type(sched) is ScheduleSettings and sched.tokens == 2_000_000
    assert cfg.group(QuantSettings).quant_overrides == {"lm_head": 8}
    with pytest.raises(ValueError, match="cooldown_fraction=1.5: must be in"):
        TrainConfig(cooldown_fraction=1.5)
    with pytest.raises(ValueError, match="teacher_dtype='int8'.*leave it out"):
        TrainConfig(teacher_dtype="int8")
    with pytest.raises(ValueError, match="train='grid': must be 'all' with --lr-control trs"):
        TrainConfig(train="grid", quantizer="lsq", lr_control="trs")  # a rule across groups


def test_the_qat_config_is_built_once_and_again_when_a_format_field_changes(
    monkeypatch,
    tiny_data_dir,  # noqa: F811
    tmp_path,
):
    built = []
    real = config_recipe.build_qat_config
    monkeypatch.setattr(config_recipe, "build_qat_config", lambda c: built.append(1) or real(c))
    cfg = TrainConfig(bits=3)
    assert len(built) == 1  # by the check
    q = cfg.qat_config()
    assert cfg.qat_config() is q and len(built) == 1 and q.weights.bits == 3
    cfg.lr = 1e-3  # not a quantization field: the same QATConfig
    assert cfg.qat_config() is q
    cfg.bits = 2
    assert cfg.qat_config().weights.bits == 2 and len(built) == 2
    # the trainer takes the config's (no second build)
    cfg = tiny_config(tiny_data_dir, tmp_path / "run", bits=3)
    t = Trainer(cfg)
    t.setup()
    assert t.qcfg is cfg.qat_config()
