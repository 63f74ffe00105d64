"""Per-path bits of a run (`TrainConfig.quant_overrides`, `--quant-overrides GLOB=SPEC`): the
command-line and YAML spellings, clear errors, the config hash, and a mixed-precision run
exported with per-path `quantization` entries that mlx-lm loads to the fake-quant loss."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import mlx.core as mx
import mlx.nn as nn
import pytest
import yaml
from mlx_lm import load
from test_convert import reference_loss
from test_train_fixtures import tiny_config, tiny_data_dir  # noqa: F401

from mlx_qat.cli.train import parse_args
from mlx_qat.convert import convert
from mlx_qat.data import eval_batches
from mlx_qat.models.build import qat_config
from mlx_qat.train import Trainer, load_config
from mlx_qat.train.config import TrainConfig

RULES = {
    "model.embed_tokens": 8,  # the (tied) embedding and head
    "*.mlp.down_proj": 4,
    "model.layers.0.self_attn.v_proj": {"bits": 6, "group_size": 32},
    "model.layers.1.self_attn.o_proj": None,  # float
}


def test_flag_and_yaml_spellings(tmp_path):
    flags = ["model.embed_tokens=8", "*.mlp.down_proj=4"]
    flags += ["model.layers.0.self_attn.v_proj={bits: 6, group_size: 32}"]
    cfg = parse_args(["--quant-overrides", *flags, "--quant-overrides", "*.o_proj=float"])
    assert cfg.quant_overrides == {**dict(list(RULES.items())[:3]), "*.o_proj": None}
    assert parse_args(["--quant-overrides", "*.mlp.*=mxfp4"]).quant_overrides == {
        "*.mlp.*": {"mode": "mxfp4"}
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"quant_overrides": RULES}, sort_keys=False))
    assert parse_args(["--config", str(path)]).quant_overrides == RULES
    # CLI > YAML: the flag's rules replace the file's
    assert parse_args(["--config", str(path), "--quant-overrides", "a=3"]).quant_overrides == {
        "a": 3
    }
    # the resolved config.yaml reads back the same, in order, directly and through the CLI
    cfg = TrainConfig(quant_overrides=RULES, out=str(tmp_path / "run"))
    (tmp_path / "config.yaml").write_text(cfg.to_yaml())
    assert load_config(tmp_path / "config.yaml") == cfg
    back = parse_args(["--config", str(tmp_path / "config.yaml")])
    assert back == cfg and list(back.quant_overrides) == list(RULES)
    q = qat_config(cfg)
    assert q.overrides["model.embed_tokens"].bits == 8 and q.overrides["*.mlp.down_proj"].bits == 4
    assert q.overrides["model.layers.0.self_attn.v_proj"].group_size == 32


@pytest.mark.parametrize(
    "item,message",
    [
        ("lm_head", r"--quant-overrides 'lm_head': write GLOB=SPEC"),
        ("lm_head=true", r"quant_overrides\['lm_head'\]=True: write GLOB=SPEC"),
        ("x={bits: 4, group: 32}", r"unknown keys \['group'\]; use bits, group_size, mode"),
        ("x={bits: 4", r"--quant-overrides 'x=\{bits: 4': write GLOB=SPEC"),
    ],
)
def test_bad_items_are_usage_errors(item, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--quant-overrides", item])
    assert e.value.code == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize(
    "rules,message",
    [
        ({"lm_head": 7}, r"quant_overrides\['lm_head'\]=7: QuantSpec\(bits=7\): affine supports"),
        ({"x": {"bits": 4, "group_size": 48}}, r"\['x'\].*group sizes 32, 64, 128"),
        ({"x": "nvfp5"}, r"\['x'\].*unknown mode; choose one of affine"),
    ],
)
def test_formats_mlx_cannot_quantize_to_name_the_rule(rules, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(quant_overrides=rules)


def test_a_rule_matching_no_layer_names_the_layers(tiny_data_dir, tmp_path):  # noqa: F811
    cfg = tiny_config(tiny_data_dir, tmp_path / "run", quant_overrides={"lm_head": 8, "*.mlp.*": 3})
    with pytest.raises(ValueError, match="quant_overrides: 'lm_head': no quantizable") as e:
        Trainer(cfg).setup()
    assert "model.embed_tokens" in str(e.value) and "model.layers.*.mlp.down_proj" in str(e.value)
    assert "'*.mlp.*'" not in str(e.value)  # that one matches
    assert not (tmp_path / "run").exists()


def test_rules_are_hashed_in_order():
    a = TrainConfig(quant_overrides={"*.mlp.*": 4, "*.mlp.up_proj": 8})
    b = TrainConfig(quant_overrides={"*.mlp.up_proj": 8, "*.mlp.*": 4})  # the first match wins
    assert len({TrainConfig().hash(), a.hash(), b.hash()}) == 3


def test_mixed_precision_run_exports_per_path_entries_and_mlx_lm_loads_it(
    tmp_path, tiny_data, runs
):
    run = runs.make(tmp_path / "run", bits=3, quant_overrides=RULES, steps=4)
    result = convert(run.path, tmp_path / "out")
    q = json.loads((tmp_path / "out" / "config.json").read_text())["quantization"]
    assert q == {
        "group_size": 64,
        "bits": 3,
        "mode": "affine",
        "model.embed_tokens": {"group_size": 64, "bits": 8, "mode": "affine"},
        "model.layers.0.mlp.down_proj": {"group_size": 64, "bits": 4, "mode": "affine"},
        "model.layers.1.mlp.down_proj": {"group_size": 64, "bits": 4, "mode": "affine"},
        "model.layers.0.self_attn.v_proj": {"group_size": 32, "bits": 6, "mode": "affine"},
        "model.layers.1.self_attn.o_proj": False,
    }
    assert result.layers == {"affine3g64": 10, "affine8g64": 1, "affine4g64": 2,
                             "affine6g32": 1, "float": 1}  # fmt: skip
    assert result.parity["passed"] and result.parity["rel_diff"] <= 1e-4
    model, _ = load(str(tmp_path / "out"))
    layers = model.model.layers
    assert model.model.embed_tokens.bits == 8 and layers[1].self_attn.q_proj.bits == 3
    assert (layers[0].self_attn.v_proj.bits, layers[0].self_attn.v_proj.group_size) == (6, 32)
    assert layers[1].mlp.down_proj.bits == 4 and layers[0].mlp.up_proj.bits == 3
    assert type(layers[1].self_attn.o_proj).__name__ == "Linear"
    ref = reference_loss(run.model, tiny_data)  # the fake-quant model as trained
    total = count = 0
    for x in eval_batches(tiny_data.val, 4, 64, 2):  # the batches reference_loss reads
        logits = model(x[:, :-1]).astype(mx.float32)
        total += nn.losses.cross_entropy(logits, x[:, 1:], reduction="sum").item()
        count += x[:, 1:].size
    got = total / count
    assert abs(got - ref) / ref <= 1e-4
    # and the run's own config says so: the checkpoint's QAT config has the rules
    cfg = load_config(run.path / "config.yaml")
    assert cfg.quant_overrides == RULES and replace(cfg, quant_overrides={}).hash() != cfg.hash()


# The README's --quant-overrides example, item for item ("QAT a pretrained model").
README_ITEMS = [
    "model.embed_tokens=8",
    "*.mlp.down_proj=4",
    "model.layers.0.*={bits: 6, group_size: 32}",
    "*.gate=float",
]
# A tiny MoE model on which every README rule decides a layer: layer 0 a plain MLP
# (mlp.down_proj), layer 1 a mixture of experts with a router (mlp.gate).
MOE = dict(
    model_type="qwen3_moe", hidden_size=64, num_hidden_layers=2, intermediate_size=128,
    num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=512,
    num_experts=4, num_experts_per_tok=2, decoder_sparse_step=1, mlp_only_layers=[0],
    moe_intermediate_size=64, head_dim=16, rope_theta=10000.0, tie_word_embeddings=False,
    max_position_embeddings=512, norm_topk_prob=True,
)  # fmt: skip


def test_readme_quant_overrides_example_trains_from_the_command_line(tiny_data_dir, tmp_path):  # noqa: F811
    import subprocess
    import sys
    from pathlib import Path

    from mlx_qat.checkpoint import build_model
    from mlx_qat.qat_config import quantization_map

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    flat = " ".join(readme.split())  # the example wraps over lines
    assert "--quant-overrides " + " ".join(f"'{i}'" for i in README_ITEMS) in flat
    (tmp_path / "moe.json").write_text(json.dumps(MOE))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "mlx_qat", "train", "--data", str(tiny_data_dir), "--out",
           str(run), "--model-config", str(tmp_path / "moe.json"), "--tokens", "256",
           "--batch-size", "2", "--seq-len", "32", "--qat-fraction", "0.5", "--eval-batches",
           "1", "--final-eval-batches", "1", "--no-compile", "--quiet",
           "--quant-overrides", *README_ITEMS]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = quantization_map(build_model(run))
    fmt = {p: (s.bits, s.group_size) if s else None for p, s in got.items()}
    assert fmt["model.embed_tokens"] == (8, 64)
    assert fmt["model.layers.0.mlp.down_proj"] == (4, 64)  # the earlier glob wins there
    assert fmt["model.layers.0.self_attn.q_proj"] == fmt["model.layers.0.mlp.up_proj"] == (6, 32)
    assert fmt["model.layers.1.mlp.gate"] is None  # the router stays float
    assert fmt["model.layers.1.self_attn.q_proj"] == (4, 64)  # no rule: --bits
    assert load_config(run / "config.yaml").quant_overrides == dict(
        [("model.embed_tokens", 8), ("*.mlp.down_proj", 4),
         ("model.layers.0.*", {"bits": 6, "group_size": 32}), ("*.gate", None)]
    )  # fmt: skip


def test_a_shadowed_rule_is_refused_by_name(tiny_data_dir, tmp_path):  # noqa: F811
    from tiny_models import tiny_model

    from mlx_qat.qat_config import QATConfig

    model = tiny_model("llama")
    # an exact path is decided before any glob, wherever it stands
    QATConfig(overrides={"*.mlp.*": 4, "model.layers.0.mlp.up_proj": 8}).check_overrides(model)
    QATConfig(overrides={"*.mlp.down_proj": 4, "model.layers.0.*": 6}).check_overrides(model)
    for rules, dead, by in [
        ({"*.mlp.*": 4, "*.mlp.up_proj": 8}, r"\*\.mlp\.up_proj", r"'\*\.mlp\.\*'"),
        ({"model.layers.0.mlp.up_*": 8, "model.layers.0.mlp.up_proj": 3},
         r"model\.layers\.0\.mlp\.up_\*", "'model.layers.0.mlp.up_proj'"),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=f"overrides: '{dead}' is shadowed: .* by {by}"):
            QATConfig(overrides=rules).check_overrides(model)
    cfg = tiny_config(
        tiny_data_dir, tmp_path / "run", quant_overrides={"*.mlp.*": 4, "*.mlp.up_proj": 8}
    )
    with pytest.raises(ValueError, match=r"quant_overrides: '\*\.mlp\.up_proj' is shadowed"):
        Trainer(cfg).setup()
    assert not (tmp_path / "run").exists()
