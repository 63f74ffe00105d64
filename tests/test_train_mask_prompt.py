"""`--mask-prompt`: the prompt tokens carry no loss in ce, kd and mix; the loss is the mean over
the other tokens (train/step.py `masked_mean`, train/distill.py, data/batches.py weights, the
trainer's wiring) — against numpy transcriptions over the unmasked positions only."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from test_data_records import COMPLETIONS, write_jsonl
from test_train_fixtures import tiny_config, tiny_data_dir  # noqa: F401
from tiny_models import tiny_model as model

from mlx_qat.data import TokenBatches, load_bundle, prepare_data
from mlx_qat.prepare import set_fake_quant
from mlx_qat.train import Trainer
from mlx_qat.train.distill import make_loss, objective_loss
from mlx_qat.train.metrics import read_metrics
from mlx_qat.train.step import loss_fn, make_step


def np_log_softmax(z, t=1.0):
    z = z.astype(np.float64) / t
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_ce(logits, targets):
    lp = np_log_softmax(logits)
    return -np.take_along_axis(lp, targets[..., None], -1)[..., 0]


def np_kd(logits, teacher, t):
    ls, lt = np_log_softmax(logits, t), np_log_softmax(teacher, t)
    return t * t * (np.exp(lt) * (lt - ls)).sum(-1)


def masked(per_token, w):
    keep = w.astype(bool)
    return per_token[keep].sum() / keep.sum()  # only the unmasked positions, by selection


def batch(vocab=64, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (3, 9))
    w = (rng.random((3, 8)) < 0.6).astype(np.float32)
    w[0, :] = 0  # a row that is all prompt
    return mx.array(tokens), mx.array(w)


def test_ce_is_the_mean_over_the_unmasked_targets():
    m = model("llama", vocab=64)
    tokens, w = batch()
    x, y = tokens[:, :-1], tokens[:, 1:]
    want = masked(np_ce(np.array(m(x)), np.array(y)), np.array(w))
    assert loss_fn(m, x, y, w).item() == pytest.approx(want, rel=1e-5)
    # the prompt's targets do not matter at all
    y2 = mx.where(w > 0, y, (y + 7) % 64)
    assert loss_fn(m, x, y2, w).item() == pytest.approx(want, rel=1e-5)
    # no weights: every token, as before
    assert loss_fn(m, x, y).item() == pytest.approx(
        np_ce(np.array(m(x)), np.array(y)).mean(), rel=1e-5
    )


@pytest.mark.parametrize("objective", ["ce", "kd", "mix"])
def test_objectives_average_over_the_unmasked_tokens(objective):
    rng = np.random.default_rng(1)
    zs, zt = rng.normal(size=(2, 2, 6, 40)).astype(np.float32) * 2
    y = rng.integers(0, 40, (2, 6))
    w = np.array([[1, 1, 0, 0, 1, 0], [0, 0, 0, 1, 1, 1]], np.float32)
    ce, kd = masked(np_ce(zs, y), w), masked(np_kd(zs, zt, 2.0), w)
    want = {"ce": ce, "kd": kd, "mix": 0.7 * ce + 0.3 * kd}[objective]
    got = objective_loss(mx.array(zs), mx.array(zt), mx.array(y), objective, 2.0, 0.3, mx.array(w))
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_chunked_kd_of_decoders_honours_the_mask():
    student, teacher = model("llama", vocab=64, seed=0), model("llama", vocab=64, seed=1)
    teacher.freeze()
    cfg = type("Cfg", (), dict(objective="kd", kd_temperature=2.0, kd_weight=0.5))
    loss = make_loss(teacher, cfg, student)
    assert loss.__name__ == "chunked"  # the hidden-state path (kd.kd_head_per_token)
    tokens, w = batch(seed=2)
    x, y = tokens[:, :-1], tokens[:, 1:]
    want = masked(np_kd(np.array(student(x)), np.array(teacher(x)), 2.0), np.array(w))
    assert loss(student, x, y, w).item() == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("accum", [1, 2])
def test_the_step_trains_on_weighted_batches(accum):
    import mlx.optimizers as optim

    m = model("llama", vocab=64)
    batches = [batch(seed=s) for s in range(accum)]
    want = np.mean([loss_fn(m, t[:, :-1], t[:, 1:], w).item() for t, w in batches])
    opt = optim.SGD(learning_rate=0.0)
    opt.init(m.trainable_parameters())
    loss, _ = make_step(m, opt)(batches)
    assert loss.item() == pytest.approx(want, rel=1e-5)


def test_batches_carry_the_mask_of_their_targets():
    tokens = np.arange(200, dtype=np.uint16)
    mask = (np.arange(200) % 3 != 0).astype(np.uint8)
    b = TokenBatches(tokens, 4, 16, seed=3, mask=mask)
    x, w = b.batch(5)
    starts = b.starts(5)
    assert mx.array_equal(x, TokenBatches(tokens, 4, 16, seed=3).batch(5))
    for row, s in enumerate(starts):
        np.testing.assert_array_equal(np.array(w[row]), mask[s + 1 : s + 17])
        # a target token's weight is its own mask entry (here its id decides it)
        np.testing.assert_array_equal(np.array(w[row]), np.array(x[row, 1:]) % 3 != 0)


@pytest.fixture(scope="module")
def qa_data(hf_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("qa")
    records = [
        {"prompt": f"{c['prompt']} ({i})", "completion": c["completion"] * (1 + i % 3)}
        for i in range(40)
        for c in COMPLETIONS
    ]
    write_jsonl(root / "jsonl" / "train.jsonl", records[:100])
    write_jsonl(root / "jsonl" / "valid.jsonl", records[100:])
    prepare_data(root / "jsonl", root / "data", tokenizer=hf_model)
    return root / "data"


@pytest.mark.parametrize("objective", ["ce", "kd"])
def test_a_mask_prompt_run_logs_the_masked_loss_of_its_first_batch(
    objective, hf_model, qa_data, tmp_path
):
    cfg = tiny_config(
        qa_data, tmp_path / "run", model=str(hf_model), qat_fraction=1.0, tokens=2 * 4 * 32,
        objective=objective, kd_temperature=1.0, mask_prompt=True,
    )  # fmt: skip
    from mlx_lm.utils import load_model

    teacher, _ = load_model(hf_model)
    t = Trainer(cfg)
    t.setup()
    bundle = load_bundle(qa_data)
    mask = bundle.loss_mask("train")
    x, w = TokenBatches(bundle.train, cfg.batch_size, cfg.seq_len, cfg.seed, mask).batch(0)
    assert 0 < float(w.sum()) < w.size  # the window holds prompt and completion tokens
    set_fake_quant(t.model, True)  # what the first step (the QAT phase's) trains
    logits = np.array(t.model(x[:, :-1]))
    t.run()
    if objective == "ce":
        want = masked(np_ce(logits, np.array(x[:, 1:])), np.array(w))
    else:
        want = masked(np_kd(logits, np.array(teacher(x[:, :-1])), 1.0), np.array(w))
    first = read_metrics(tmp_path / "run", "train")[0]["loss"]
    assert first == pytest.approx(want, rel=1e-4)


def test_mask_prompt_on_text_data_names_the_fix(tiny_data_dir, tmp_path):  # noqa: F811
    t = Trainer(tiny_config(tiny_data_dir, tmp_path / "run", mask_prompt=True))
    with pytest.raises(ValueError, match="--mask-prompt: data .* has no prompts"):
        t.setup()
