"""Train = deploy per quantizer and format: the exported files hold exactly the trained grid,
and the model mlx_lm.load builds from them has the fake-quant validation loss."""

from __future__ import annotations

import json

import mlx.core as mx
import pytest
import test_convert_fixtures as fx
from mlx_lm import load
from mlx_lm.utils import compute_bits_per_weight
from test_convert_fixtures import BATCH, EVAL_BATCHES, SEQ_LEN, spec

from mlx_qat.convert import convert, val_loss
from mlx_qat.convert.pack import dtype_name
from mlx_qat.data import eval_batches
from mlx_qat.prepare import qat_layers
from mlx_qat.qat_config import QATConfig
from mlx_qat.quant import QuantSpec
from mlx_qat.quant.affine import unpack_codes

exported, same = fx.exported, fx.same
UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": 2.0**-24}


def cast_bound(code: mx.array, scales: mx.array, biases: mx.array, dtype: mx.Dtype) -> mx.array:
    """Per-weight bound on |Δŵ| when a float32 grid is saved and dequantized in `dtype`:
    3u·(code·|s| + |b|), one rounding each for s, b, the product and the sum."""
    u = UNIT_ROUNDOFF[dtype_name(dtype)]
    return 3 * u * (code * mx.abs(scales) + mx.abs(biases))


def loss(model, data) -> float:
    return val_loss(model, eval_batches(data.val, BATCH, SEQ_LEN, EVAL_BATCHES))


# The trainer's settings (TrainConfig fields) of each case; embeddings at the weights' format.
CASES = {
    "minmax-affine4": dict(bits=4),
    "minmax-affine3-g32": dict(bits=3, group_size=32, embed_bits=3),
    "lsq2-seq": dict(bits=2, quantizer="lsq", embed_bits=2),
    "lsq3": dict(bits=3, quantizer="lsq", embed_bits=3),
    "lsq4-per-group": dict(bits=4, group_size=32, quantizer="lsq", lsq_per="group"),
    "learned_affine4": dict(bits=4, quantizer="learned_affine"),
    "learned_affine3-fixed-codes": dict(
        bits=3, quantizer="learned_affine", scale_grad="fixed_codes", embed_bits=3
    ),
    "mxfp4": dict(q_mode="mxfp4"),
    "nvfp4": dict(q_mode="nvfp4"),
}
FORMATS = {  # the weights' format of each case
    "minmax-affine4": spec(bits=4),
    "minmax-affine3-g32": spec(bits=3, group_size=32),
    "lsq2-seq": spec(bits=2),
    "lsq3": spec(bits=3),
    "lsq4-per-group": spec(bits=4, group_size=32),
    "learned_affine4": spec(bits=4),
    "learned_affine3-fixed-codes": spec(bits=3),
    "mxfp4": QuantSpec("mxfp4", 4, 32),
    "nvfp4": QuantSpec("nvfp4", 4, 16),
}


@pytest.mark.parametrize("name", list(CASES))
def test_export_is_the_trained_grid(name, tmp_path, tiny_data, runs):
    run = runs.make(tmp_path / "run", **CASES[name])
    assert {layer.spec for _, layer in qat_layers(run.model)} == {FORMATS[name]}
    result = convert(run.path, tmp_path / "out")
    files = exported(tmp_path / "out")
    for path, layer in qat_layers(run.model):
        grid = layer.quantizer.grid(layer["weight"])
        assert same(files[f"{path}.weight"], grid.wq), path
        assert same(files[f"{path}.scales"], grid.scales), path
        if grid.biases is None:
            assert f"{path}.biases" not in files
        else:
            assert same(files[f"{path}.biases"], grid.biases), path

    model, _ = load(str(tmp_path / "out"))
    ref = loss(run.model, tiny_data)
    assert abs(loss(model, tiny_data) - ref) / ref <= 1e-4
    assert result.parity["rel_diff"] <= 1e-4 and result.parity["reference"] == pytest.approx(ref)
    want = FORMATS[name].to_mlx()
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert {k: config["quantization"][k] for k in want} == want
    assert result.bits_per_weight == pytest.approx(compute_bits_per_weight(model), abs=1e-4)


def test_learned_grids_are_not_a_fresh_quantize(tmp_path, runs):
    run = runs.make(tmp_path / "run", **CASES["learned_affine4"], steps=4)
    convert(run.path, tmp_path / "out", parity_check=False)
    files = exported(tmp_path / "out")
    moved = 0
    for path, layer in qat_layers(run.model):
        with mx.stream(mx.cpu):  # the canonical min/max grid (Metal's mx.quantize differs)
            wq, s, b = mx.quantize(layer["weight"], 64, 4)
        moved += not (same(files[f"{path}.scales"], s) and same(files[f"{path}.biases"], b))
    assert moved > 0  # training moved the learned scale/bias away from min/max


def test_mixed_precision_per_path_entries(tmp_path, runs):
    qcfg = QATConfig(
        weights=spec(bits=4),
        overrides={
            "model.layers.0.self_attn.v_proj": {"bits": 8},
            "*.mlp.down_proj": QuantSpec("affine", 2, 32),
            "model.layers.1.self_attn.o_proj": False,
        },
    )
    run = runs.make(tmp_path / "run", qat=qcfg)
    result = convert(run.path, tmp_path / "out")
    q = json.loads((tmp_path / "out" / "config.json").read_text())["quantization"]
    assert q["model.layers.0.self_attn.v_proj"] == {"group_size": 64, "bits": 8, "mode": "affine"}
    for i in (0, 1):
        assert q[f"model.layers.{i}.mlp.down_proj"] == {
            "group_size": 32,
            "bits": 2,
            "mode": "affine",
        }
    assert q["model.layers.1.self_attn.o_proj"] is False
    model, _ = load(str(tmp_path / "out"))
    layers = model.model.layers
    assert layers[0].self_attn.v_proj.bits == 8 and layers[0].self_attn.q_proj.bits == 4
    assert (layers[1].mlp.down_proj.bits, layers[1].mlp.down_proj.group_size) == (2, 32)
    assert type(layers[1].self_attn.o_proj).__name__ == "Linear"
    assert result.parity["rel_diff"] <= 1e-4
    assert result.layers == {"affine4g64": 11, "affine8g64": 1, "affine2g32": 2, "float": 1}


@pytest.mark.parametrize("kind", ["minmax", "lsq", "learned_affine"])
def test_scale_dtype_export_is_exact(kind, tmp_path, runs):
    """Trained with scale_dtype=float16: the default export is float16 and dequantizes to ŵ."""
    run = runs.make(tmp_path / "run", bits=4, quantizer=kind, scale_dtype="float16")
    # MLX's CPU quantized matmul is slow in float16: one parity batch, for one quantizer.
    result = convert(run.path, tmp_path / "out", parity_batches=1, parity_check=kind == "lsq")
    assert result.dtype == "float16"
    files = exported(tmp_path / "out")
    for path, layer in qat_layers(run.model):
        grid = layer.quantizer.grid(layer["weight"])
        assert files[f"{path}.scales"].dtype == mx.float16
        assert same(files[f"{path}.scales"], grid.scales) and same(
            files[f"{path}.biases"], grid.biases
        )
        w_hat = mx.dequantize(
            files[f"{path}.weight"], files[f"{path}.scales"], files[f"{path}.biases"], 64, 4
        )
        assert same(w_hat.astype(mx.float32), layer.effective_weight()), path
    if result.parity is not None:  # only the activations moved: within the float16 tolerance
        assert result.parity["passed"] and result.parity["tolerance"] == 1e-3


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_export_without_scale_dtype_is_within_the_bound(dtype, tmp_path, runs):
    run = runs.make(tmp_path / "run", bits=4, quantizer="lsq")
    result = convert(run.path, tmp_path / "out", dtype=dtype, parity_batches=1)
    files = exported(tmp_path / "out")
    d = getattr(mx, dtype)
    for path, layer in qat_layers(run.model):
        grid = layer.quantizer.grid(layer["weight"])
        assert same(files[f"{path}.weight"], grid.wq)  # the codes never change
        s, b = files[f"{path}.scales"], files[f"{path}.biases"]
        assert s.dtype == d
        w_hat = mx.dequantize(files[f"{path}.weight"], s, b, 64, 4).astype(mx.float32)
        code = unpack_codes(grid.wq, 4).astype(mx.float32).reshape(*s.shape, 64)
        bound = cast_bound(code, grid.scales[..., None], grid.biases[..., None], d)
        err = mx.abs(w_hat - layer.effective_weight()).reshape(bound.shape)
        assert mx.all(err <= bound).item(), path
    assert result.parity["passed"]


def test_ptq_is_mlx_round_to_nearest_of_the_float_weights(tmp_path, tiny_data, runs):
    run = runs.make(tmp_path / "run", **CASES["lsq2-seq"])
    result = convert(run.path, tmp_path / "out", ptq=True)
    files = exported(tmp_path / "out")
    for path, layer in qat_layers(run.model):
        with mx.stream(mx.cpu):  # MLX's own CPU quantizer (Metal's mx.quantize differs)
            wq, s, b = mx.quantize(layer["weight"], 64, 2)
        assert same(files[f"{path}.weight"], wq) and same(files[f"{path}.scales"], s), path
        assert same(files[f"{path}.biases"], b), path
    p = result.parity
    assert result.method == "ptq" and p["rel_diff"] <= 1e-4
    qat = convert(run.path, tmp_path / "qat").parity  # reports FP, PTQ and QAT in one card
    assert qat["ptq"] == pytest.approx(p["reference"], rel=1e-6) and qat["fp"] == p["fp"]
    assert "PTQ: round-to-nearest" in (tmp_path / "qat" / "README.md").read_text()
    for _, layer in qat_layers(run.model):
        layer.fake_quant = False
    assert p["fp"] == pytest.approx(loss(run.model, tiny_data), rel=1e-6)

    other = convert(run.path, tmp_path / "out3", ptq=True, q_bits=3, q_group_size=32)
    q = json.loads((tmp_path / "out3" / "config.json").read_text())["quantization"]
    assert (q["bits"], q["group_size"]) == (3, 32) and other.parity["rel_diff"] <= 1e-4


def test_dequantize_writes_the_fake_quant_weights_as_floats(tmp_path, runs):
    run = runs.make(tmp_path / "run", **CASES["learned_affine4"])
    result = convert(run.path, tmp_path / "out", dequantize=True)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "quantization" not in config and "quantization_config" not in config
    files = exported(tmp_path / "out")
    for path, layer in qat_layers(run.model):
        assert same(files[f"{path}.weight"], layer.effective_weight()), path
    assert result.parity["rel_diff"] <= 1e-4 and result.bits_per_weight == pytest.approx(32.0)
