"""Model presets: one dial (depth) -> width, heads, MLP; any mlx-lm config builds."""

from __future__ import annotations

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


def test_model_from_preset_is_tied_llama_and_config_round_trips():
    c = preset_config("d2", 300)
    model = model_from_config(c)
    names = [k for k, _ in tree_flatten(model.parameters())]
    assert "lm_head.weight" not in names  # tied
    n = sum(v.size for _, v in tree_flatten(model.parameters()))
    assert n == 2 * (4 * 64 * 64 + 3 * 64 * 256) + 300 * 64 + 5 * 64
    again = model_from_config(model_config_dict(model, c))
    out = again(mx.array([[1, 2, 3]]))
    assert out.shape == (1, 3, 300)


def test_preset_for_params_picks_the_nearest_depth():
    assert preset_for_params(0.85e6) == "d4"
    assert preset_for_params(7e6) == "d8"


def test_model_from_config_rejects_unknown_arch():
    with pytest.raises(ValueError, match="model_type"):
        model_from_config({"hidden_size": 4})
    with pytest.raises(ValueError):
        model_from_config({"model_type": "no_such_arch"})
