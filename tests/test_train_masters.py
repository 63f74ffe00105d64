"""Float32 master weights: a 16-bit `--model` trains float32 latent weights (and moments), so a
fine-tune at a small learning rate moves them; `--master-dtype model` keeps the model's dtype,
where such updates round away."""

from __future__ import annotations

import json

import mlx.core as mx
from mlx.utils import tree_flatten
from test_train_fixtures import tiny_config, tiny_data_dir  # noqa: F401
from tiny_models import float_model_dir

from mlx_qat.prepare import qat_layers
from mlx_qat.train.trainer import Trainer


def bfloat16_model_dir(out):
    src, _ = float_model_dir(out, vocab=512)
    weights = {k: v.astype(mx.bfloat16) for k, v in mx.load(str(src / "model.safetensors")).items()}
    mx.save_safetensors(str(src / "model.safetensors"), weights)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "torch_dtype": "bfloat16"}))
    return src, weights


def fine_tune(data, out, model, **kw):
    cfg = tiny_config(
        data, out, model=str(model), qat_fraction=1.0, tokens=4 * 4 * 32, lr=1e-5,
        quantizer="learned_affine", objective="kd", warmup_steps=0, cooldown_fraction=0.0,
        **kw,
    )  # fmt: skip
    t = Trainer(cfg)
    t.setup()
    t.run()
    return t


def test_bfloat16_model_trains_float32_masters(tiny_data_dir, tmp_path):  # noqa: F811
    src, start = bfloat16_model_dir(tmp_path / "bf16")
    ours = fine_tune(tiny_data_dir, tmp_path / "f32", src)
    kept = fine_tune(tiny_data_dir, tmp_path / "own", src, master_dtype="model")

    def moved(t) -> float:
        """Share of the linear weights' elements that differ from the model file's."""
        w = {p: layer["weight"] for p, layer in qat_layers(t.model)}
        diff = sum(int((w[p] != start[f"{p}.weight"].astype(w[p].dtype)).sum()) for p in w)
        return diff / sum(v.size for v in w.values())

    latent = dict(tree_flatten(ours.model.parameters()))
    assert all(v.dtype == mx.float32 for v in latent.values())
    assert all(v.dtype == mx.float32 for _, v in tree_flatten(ours.optimizer.state)
               if isinstance(v, mx.array) and v.ndim)  # fmt: skip
    own = {v.dtype for k, v in tree_flatten(kept.model.parameters()) if ".quantizer." not in k}
    assert own == {mx.bfloat16}
    # four Adam steps of ~1e-5 on weights of ~0.02: every float32 master moves, while in
    # bfloat16 (spacing ~1e-4 there) almost every update rounds away
    assert moved(ours) > 0.9, moved(ours)
    assert moved(kept) < 0.2, moved(kept)
    # the teacher stays in the model's dtype, the grid is stored in it too
    assert ours.qcfg.scale_dtype == "bfloat16"
    assert {v.dtype for _, v in tree_flatten(ours.teacher.parameters())} == {mx.bfloat16}
