"""Phase plan: the auto QAT fraction, step counts, byte accounting, the plan CLI."""

from __future__ import annotations

import json
import math

import pytest

from mlx_qat.cli.plan import main as plan_main
from mlx_qat.train.config import TrainConfig
from mlx_qat.train.phase_plan import AUTO_A, auto_fraction, make_plan, plan_for_config

# Paper 000 §4.2's table of f̂ (a = 6.7297, natural log).
TABLE = {10: 0.054, 20: 0.106, 50: 0.179, 100: 0.232, 200: 0.281, 500: 0.339, 1e3: 0.377}


@pytest.mark.parametrize("s, expected", sorted(TABLE.items()))
def test_auto_fraction_matches_the_paper_table(s, expected):
    assert auto_fraction(s) == pytest.approx(expected, abs=5e-4)
    assert auto_fraction(s) == pytest.approx(math.exp(-AUTO_A / math.log(s)))


@pytest.mark.parametrize("s", [1.0, 0.5, 0.0, -3.0])
def test_auto_fraction_is_zero_at_or_below_one_token_per_byte(s):
    assert auto_fraction(s) == 0.0


def test_auto_fraction_grows_with_s():
    values = [auto_fraction(s) for s in (1.01, 2, 10, 1e3, 1e6, 1e12)]
    assert values == sorted(values) and values[-1] < 1.0


def cfg(**kw):
    base = dict(tokens=100_000, batch_size=10, seq_len=10, qat_fraction="auto")
    base.update(kw)
    return TrainConfig(**base)


def test_auto_plan_uses_tokens_per_byte():
    p = make_plan(cfg(), n_params=2000, n_params_no_embed=1500, param_bytes=1000.0)
    assert p.tokens_per_byte == 100.0
    assert p.f_hat == pytest.approx(0.232, abs=5e-4)
    assert p.total_steps == 1000 and p.qat_steps == round(p.f_hat * 1000)
    assert p.fp_steps + p.qat_steps == p.total_steps
    assert p.fraction == p.qat_steps / p.total_steps
    assert not p.warning


def test_s_below_one_means_ptq_only_with_a_clear_warning():
    p = make_plan(cfg(), n_params=10**6, n_params_no_embed=10**6, param_bytes=5e5)
    assert p.tokens_per_byte == pytest.approx(0.2)
    assert p.qat_steps == 0 and p.fp_steps == p.total_steps
    assert "S = D / bytes" in p.warning and "--qat-fraction" in p.warning


def test_numeric_fraction_and_rounding():
    p = make_plan(cfg(qat_fraction=0.25, tokens=1001), 10, 10, 10.0)
    assert p.total_steps == 11  # ceil(1001 / 100)
    assert p.qat_steps == 3  # round(2.75)
    q = make_plan(cfg(qat_fraction=0.01, tokens=1000), 10, 10, 10.0)
    assert q.qat_steps == 0 and "rounds to 0" in q.warning


@pytest.mark.parametrize("bad", ["half", 1.5, -0.1, "nan"])
def test_bad_fraction_is_refused(bad):
    with pytest.raises(ValueError, match="qat_fraction"):
        TrainConfig(qat_fraction=bad)


def test_plan_for_a_preset_counts_bytes_per_tensor():
    # d2 at vocab 512, 4-bit: every linear and the tied embedding at 4 bits, norms in fp32.
    c = TrainConfig(preset="d2", vocab_size=512, bits=4, tokens=1_000_000)
    p = plan_for_config(c)
    hidden, inter, layers, vocab = 64, 256, 2, 512
    linear = layers * (4 * hidden * hidden + 3 * hidden * inter)
    norms = (2 * layers + 1) * hidden
    assert p.n_params == linear + vocab * hidden + norms
    assert p.n_params_no_embed == linear + norms
    assert p.param_bytes == pytest.approx((linear + vocab * hidden) * 4 / 8 + norms * 4)
    # 2-bit weights keep the embedding at max(2, 4) = 4 bits.
    p2 = plan_for_config(TrainConfig(preset="d2", vocab_size=512, bits=2, tokens=1_000_000))
    assert p2.param_bytes == pytest.approx(linear * 2 / 8 + vocab * hidden * 4 / 8 + norms * 4)
    assert p2.f_hat > p.f_hat  # fewer bytes -> larger S -> more QAT


def test_plan_cli_prints_the_plan(capsys):
    """The printed numbers are the closed-form ones, computed here by hand for d2 at vocab 512:
    4-bit linears, the tied embedding at max(4, 4) bits, float32 norms."""
    D, vocab, hidden, inter, depth = 2_000_000, 512, 64, 256, 2
    linear = depth * (4 * hidden * hidden + 3 * hidden * inter)
    norms = (2 * depth + 1) * hidden
    n = linear + vocab * hidden + norms
    nbytes = (linear + vocab * hidden) * 4 / 8 + norms * 4
    S = D / nbytes
    f_hat = math.exp(-6.7297 / math.log(S))
    steps = math.ceil(D / (16 * 128))  # default batch 16 x 128 tokens
    qat = round(f_hat * steps)
    assert plan_main(["--preset", "d2", "--vocab-size", "512", "--tokens", "2000000"]) == 0
    out = capsys.readouterr().out
    assert f"parameters N     {n:,} ({linear + norms:,} without embeddings)" in out
    assert f"parameter bytes  {nbytes:,.0f}" in out
    assert f"tokens/byte S    {S:,.2f}" in out
    assert f"auto fraction    {f_hat:.4f}" in out
    assert f"QAT fraction f   {qat / steps:.4f}  (requested: auto)" in out
    assert (
        f"FP phase         {(steps - qat) * 16 * 128:,} tokens, steps 0..{steps - qat - 1}" in out
    )
    assert (
        plan_main(["--preset", "d2", "--vocab-size", "512", "--tokens", "2000000", "--json"]) == 0
    )
    d = json.loads(capsys.readouterr().out)
    assert (d["n_params"], d["total_steps"], d["qat_steps"]) == (n, steps, qat)
    assert d["param_bytes"] == pytest.approx(nbytes) and d["f_hat"] == pytest.approx(f_hat)


def test_plan_cli_reports_bad_input(capsys):
    assert plan_main(["--preset", "d3"]) == 1
    assert "even depth" in capsys.readouterr().err


def test_plan_for_any_mlx_lm_config(tmp_path):
    # Not a preset: a Qwen2-style config.json (untied head: lm_head at the embedding bits).
    cfg = {
        "model_type": "qwen2",
        "hidden_size": 64,
        "num_hidden_layers": 1,
        "intermediate_size": 128,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "rms_norm_eps": 1e-6,
        "vocab_size": 256,
        "tie_word_embeddings": False,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    p = plan_for_config(TrainConfig(model_config=str(path), tokens=10**6))
    assert p.n_params_no_embed < p.n_params
    assert p.n_params - p.n_params_no_embed == 2 * 256 * 64  # embedding + untied lm_head
    # The plan reads --model-config as training does: a quantized model's config is refused.
    path.write_text(json.dumps({**cfg, "quantization": {"bits": 4, "group_size": 64}}))
    with pytest.raises(ValueError, match="describes a quantized model; remove its 'quantization'"):
        plan_for_config(TrainConfig(model_config=str(path), tokens=10**6))
