"""Model presets: one dial (depth) -> width, heads, MLP; any mlx-lm config builds."""

from __future__ import annotations

import math

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

from mlx_qat.models import model_config_dict, model_from_config, preset_config, preset_for_params


@pytest.mark.parametrize(
    "name, hidden, heads, inter", [("d2", 64, 1, 256), ("d4", 128, 2, 384), ("d8", 256, 4, 768)]
)
def test_preset_dimensions(name, hidden, heads, inter):
    c = preset_config(name, vocab_size=512)
    assert (c["hidden_size"], c["num_attention_heads"], c["intermediate_size"]) == (
        hidden,
        heads,
        inter,
    )
    assert c["num_hidden_layers"] == int(name[1:])
    assert c["tie_word_embeddings"] is True and c["model_type"] == "llama"
    # Every linear input dim is a multiple of the default group size (64).
    assert hidden % 64 == 0 and inter % 128 == 0


@pytest.mark.parametrize("bad", ["d3", "d0", "x4", "d", "4"])
def test_bad_preset_names_the_form(bad):
    with pytest.raises(ValueError, match="even depth"):
        preset_config(bad, 512)


@pytest.mark.parametrize("name, table_m", [("d2", 0.13), ("d4", 0.85), ("d6", 2.7), ("d8", 6.8)])
def test_preset_parameter_count_is_the_docstring_closed_form(name, table_m):
    """N = depth·(4h² + 3h·I + 2h) + V·h + h (attention, SwiGLU MLP, two norms per layer, the
    tied embedding, the final norm), with h = 32·depth and I = 8/3·h rounded up to 128; N
    without embeddings rounds to the docstring table's figure."""
    vocab = 300
    depth = int(name[1:])
    h = 32 * depth
    inter = 128 * math.ceil(8 * h / 3 / 128)
    no_embed = depth * (4 * h * h + 3 * h * inter + 2 * h) + h
    model = model_from_config(preset_config(name, vocab))
    params = dict(tree_flatten(model.parameters()))
    assert "lm_head.weight" not in params  # tied
    assert sum(v.size for v in params.values()) == no_embed + vocab * h
    assert round(no_embed / 1e6, 2 if table_m < 1 else 1) == table_m
    from mlx_qat.models import presets

    assert f"| {name:<6} | {h:<6} |" in presets.__doc__  # the row the figure was read from


def test_model_config_round_trips():
    c = preset_config("d2", 300)
    model = model_from_config(c)
    again = model_from_config(model_config_dict(model, c))
    again.update(model.parameters())
    x = mx.array([[1, 2, 3]])
    assert again(x).shape == (1, 3, 300)
    assert mx.array_equal(again(x), model(x))


def test_preset_for_params_picks_the_nearest_depth():
    assert preset_for_params(0.85e6) == "d4"
    assert preset_for_params(7e6) == "d8"


def test_model_from_config_rejects_unknown_arch():
    with pytest.raises(ValueError, match="model_type"):
        model_from_config({"hidden_size": 4})
    with pytest.raises(ValueError):
        model_from_config({"model_type": "no_such_arch"})


def test_model_config_dict_writes_no_null_the_caller_did_not():
    """A config.json without max_position_embeddings must not come back with it as null
    (transformers refuses `max_position_embeddings: null` when convert builds a tokenizer
    config); Nones the caller wrote are kept."""
    c = {k: v for k, v in preset_config("d2", 300).items() if k != "max_position_embeddings"}
    model = model_from_config(c)
    assert model.args.max_position_embeddings is None  # the ModelArgs default
    out = model_config_dict(model, c)
    assert "max_position_embeddings" not in out
    assert out["hidden_size"] == c["hidden_size"] and out["model_type"] == "llama"
    kept = model_config_dict(model, {**c, "max_position_embeddings": None})
    assert kept["max_position_embeddings"] is None
