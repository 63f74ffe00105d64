"""`--train grid`: QAT with every weight frozen trains the quantization grid and the norms, and
with DWQ's settings it *is* mlx-lm's DWQ — checked step for step through the trainer against
`mlx_lm.quant.dwq.dwq_quantize` on the same windows in the same order."""

from __future__ import annotations

import copy

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten
from test_train_fixtures import tiny_config, tiny_data_dir  # noqa: F401
from tiny_models import float_model_dir

from mlx_qat.data import TokenBatches, load_bundle
from mlx_qat.prepare import qat_layers
from mlx_qat.train.trainer import Trainer

T, B, L, STEPS, LR = 2.0, 4, 32, 4, 1e-3


def dwq_settings(data, out, model, **kw):
    """A fine-tune with mlx-lm DWQ's settings: grid only, fixed-code gradient, KL at T,
    Adam (β2 0.999, no weight decay, no clipping, constant LR, no warmup). DWQ's loss has no
    T² factor and Adam's ε 1e-8: Adam is invariant to the loss scale when ε scales with it,
    so our T² KL with ε = T² 1e-8 takes DWQ's steps exactly."""
    base = dict(
        model=str(model), qat_fraction=1.0, tokens=STEPS * B * L, batch_size=B, seq_len=L,
        train="grid", quantizer="learned_affine", scale_grad="fixed_codes", objective="kd",
        kd_temperature=T, bits=3, group_size=32, embed_bits=3, lr=LR, quantizer_lr_scale=1.0,
        beta2=0.999, eps=T**2 * 1e-8, grad_clip=0.0, cooldown_fraction=0.0, warmup_steps=0, weight_decay=0.0,
    )  # fmt: skip
    base.update(kw)
    return tiny_config(data, out, **base)


def grid_and_norms(model) -> dict[str, mx.array]:
    """Our trainable arrays under mlx-lm's names (`<layer>.scales` / `.biases`, norms as is)."""
    names = {}
    for path, _ in qat_layers(model):
        names[f"{path}.quantizer.scale"] = f"{path}.scales"
        names[f"{path}.quantizer.bias"] = f"{path}.biases"
    return {names.get(k, k): mx.array(v) for k, v in tree_flatten(model.trainable_parameters())}


class RecordingAdam(optim.Adam):
    """mlx-lm's DWQ optimizer, keeping the parameters after every step."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.steps: list[dict[str, mx.array]] = []

    def apply_gradients(self, gradients, parameters):
        out = super().apply_gradients(gradients, parameters)
        mx.eval(out)
        self.steps.append(dict(tree_flatten(out)))
        return out


def run_mlx_lm_dwq(src, batches, seed: int, bits: int = 3) -> list[dict[str, mx.array]]:
    """`dwq_quantize` on `batches` (B x (L+1) token arrays) in this order."""
    from mlx_lm.quant.dwq import dwq_quantize
    from mlx_lm.utils import load_model, quantize_model

    teacher, config = load_model(src)
    student = copy.deepcopy(teacher)
    quantize_model(student, config, group_size=32, bits=bits)
    teacher.freeze()
    # mlx-lm's iterate_batches yields batch_idx[perm[k]] k-th, perm from np.random.seed(seed)
    np.random.seed(seed)
    perm = np.random.permutation(len(batches))
    groups = [None] * len(batches)
    for k, b in enumerate(batches):
        groups[perm[k]] = np.array(b)
    windows = [(row.tolist(), 0) for g in groups for row in g]
    opt = RecordingAdam(learning_rate=LR, bias_correction=True)
    dwq_quantize(
        student, lambda x, i, split: teacher(x), opt, windows, windows[:B], B, L + 1, seed,
        dtype=mx.float32, temperature=T,
    )  # fmt: skip
    return opt.steps


@pytest.mark.parametrize("bits", [3, 2])
def test_grid_mode_follows_mlx_lm_dwq_step_for_step(tiny_data_dir, tmp_path, bits):  # noqa: F811
    src, _ = float_model_dir(tmp_path / "float", vocab=512)
    cfg = dwq_settings(tiny_data_dir, tmp_path / "run", src, bits=bits, embed_bits=bits)
    ours: list[dict[str, mx.array]] = []
    t = Trainer(cfg, on_step=lambda tr, s: ours.append(grid_and_norms(tr.model)))
    t.setup()
    t.run()

    data = TokenBatches(load_bundle(tiny_data_dir).train, B, L, cfg.seed)
    theirs = run_mlx_lm_dwq(src, [data.batch(s) for s in range(STEPS)], cfg.seed, bits)
    assert len(ours) == len(theirs) == STEPS
    assert ours[0].keys() == theirs[0].keys()
    assert any(k.endswith("norm.weight") for k in theirs[0])  # DWQ trains the norms too
    for step, (mine, their) in enumerate(zip(ours, theirs)):
        for k, v in their.items():
            # float32 summation order differs (compiled step, fused ops): a small share of
            # one Adam step (LR 1e-3)
            np.testing.assert_allclose(mine[k], v, rtol=1e-4, atol=2e-5, err_msg=f"{step} {k}")
    moved = max(float(mx.abs(ours[-1][k] - ours[0][k]).max()) for k in ours[0])
    assert moved > 1.5 * LR, moved  # steps 2..4 moved the grid: the comparison is not trivial
    # every weight but the norms stayed where it was
    weights = dict(tree_flatten(t.model.parameters()))
    frozen = {k: v for k, v in mx.load(str(src / "model.safetensors")).items() if "norm" not in k}
    assert len(frozen) == 15  # 14 linear layers and the tied embedding
    for k, v in frozen.items():
        assert mx.array_equal(weights[k], v), k


def test_grid_mode_needs_qat_from_the_first_step_and_a_learnable_grid(tiny_data_dir, tmp_path):  # noqa: F811
    src, _ = float_model_dir(tmp_path / "float", vocab=512)
    with pytest.raises(ValueError, match="give --qat-fraction 1"):
        Trainer(dwq_settings(tiny_data_dir, tmp_path / "a", src, qat_fraction=0.5)).setup()
    with pytest.raises(ValueError, match="use --quantizer learned_affine"):
        dwq_settings(tiny_data_dir, tmp_path / "b", src, quantizer="minmax", scale_grad="ste")


@pytest.mark.parametrize("scale", [0.0, 0.5])
def test_weight_lr_scale_moves_the_weights_that_much_slower(tiny_data_dir, tmp_path, scale):  # noqa: F811
    """One Adam step moves each weight by about its LR (sign(g)·lr where |g| ≫ ε): with
    `weight_lr_scale` s by s·lr, while the grid and the norms take the full LR; at s = 0 the
    weights stay put and the grid follows `--train grid` exactly."""
    src, _ = float_model_dir(tmp_path / "float", vocab=512)
    start = mx.load(str(src / "model.safetensors"))
    one = dict(tokens=B * L, eps=1e-12)
    t = Trainer(
        dwq_settings(tiny_data_dir, tmp_path / "all", src, train="all", weight_lr_scale=scale, **one)
    )  # fmt: skip
    t.setup()
    t.run()
    w = dict(tree_flatten(t.model.parameters()))
    step = max(float(mx.abs(w[k] - v).max()) for k, v in start.items() if "norm" not in k)
    norm = max(float(mx.abs(w[k] - v).max()) for k, v in start.items() if "norm" in k)
    np.testing.assert_allclose(step, scale * LR, rtol=1e-3, atol=1e-9)
    np.testing.assert_allclose(norm, LR, rtol=1e-3)
    if scale == 0.0:
        g = Trainer(dwq_settings(tiny_data_dir, tmp_path / "grid", src, **one))
        g.setup()
        g.run()
        ours, grid = grid_and_norms(t.model), grid_and_norms(g.model)
        for k, v in grid.items():
            np.testing.assert_allclose(ours[k], v, rtol=1e-5, atol=1e-7, err_msg=k)


def test_grid_mode_resumes_bit_for_bit(tiny_data_dir, tmp_path):  # noqa: F811
    """The frozen set and its optimizer state survive a stop: a grid-only fine-tune killed
    after a checkpoint resumes to the uninterrupted run's losses and weights."""
    from dataclasses import replace

    from test_train_fixtures import timeless_records, train_until

    from mlx_qat.checkpoint import load_checkpoint
    from mlx_qat.train import train

    src, _ = float_model_dir(tmp_path / "float", vocab=512)
    kw = dict(tokens=8 * B * L, save_every=3)
    ref = dwq_settings(tiny_data_dir, tmp_path / "ref", src, **kw)
    train(ref)
    cut = dwq_settings(tiny_data_dir, tmp_path / "cut", src, **kw)
    train_until(cut, 5)
    train(replace(cut, resume=True))
    assert timeless_records(cut.out, "train") == timeless_records(ref.out, "train")
    a, b = load_checkpoint(tmp_path / "cut"), load_checkpoint(tmp_path / "ref")
    for k, v in b.weights.items():
        assert mx.array_equal(a.weights[k], v), k
