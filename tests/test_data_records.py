"""mlx-lm's JSONL formats in `mlx_qat.data` (data/records.py): the token ids of text,
completions and chat records are those of `mlx_lm.tuner.datasets` on the same files, with EOS
after each record; an mlx-lm data folder gives the splits; the prompt mask is mlx-lm's
`--mask-prompt` offset."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mlx_qat.data import load_bundle, prepare_data

TEXT = [
    {"text": "To be, or not to be: that is the question."},
    {"text": "  Whether 'tis nobler in the mind\n\nto suffer the slings\n"},
    {"text": "And by opposing end them."},
]
COMPLETIONS = [
    {"prompt": "Who wrote Hamlet?", "completion": "Shakespeare."},
    {"prompt": "What is a sonnet?", "completion": "A poem of fourteen lines."},
    {"prompt": "Name a king.", "completion": "Lear."},
]
CHAT = [
    {
        "messages": [
            {"role": "system", "content": "You are a poet."},
            {"role": "user", "content": "A line, please."},
            {"role": "assistant", "content": "Shall I compare thee to a summer's day?"},
        ]
    },
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hail!"}]},
    {"messages": [{"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Adieu."}]},
]
FORMATS = {"text": TEXT, "completions": COMPLETIONS, "chat": CHAT}


def write_jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def mlx_lm_reference(folder: Path, model: Path, mask_prompt: bool):
    """(ids, offset) of every record of each split, from mlx-lm's own loader of the folder
    (`mlx_lm.lora --data folder`), with mlx-lm's own tokenizer of `model`."""
    from mlx_lm.tuner.datasets import load_local_dataset
    from mlx_lm.utils import load_tokenizer

    tok = load_tokenizer(model)
    config = SimpleNamespace(mask_prompt=mask_prompt)
    splits = load_local_dataset(folder, tok, config)
    out = {
        s: [d.process(d[i]) for i in range(len(d))]
        for s, d in zip(("train", "val", "test"), splits)
    }
    return out, tok.eos_token_id


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_format_gives_mlx_lms_ids_then_eos_and_its_prompt_mask(fmt, hf_model, tmp_path):
    records = FORMATS[fmt]
    folder = tmp_path / "jsonl"
    for split, name in (("train", "train"), ("val", "valid"), ("test", "test")):
        # three distinct files: a split mapped to the wrong file would show
        k = {"train": 0, "val": 1, "test": 2}[split]
        write_jsonl(folder / f"{name}.jsonl", records[k:] + records[:k])
    b = prepare_data(folder, tmp_path / "data", tokenizer=hf_model)
    ref, eos = mlx_lm_reference(folder, hf_model, mask_prompt=fmt != "text")
    for split, pairs in ref.items():
        want_ids, want_mask = [], []
        for ids, offset in pairs:
            ids = list(ids) if ids[-1] == eos else [*ids, eos]
            want_ids += ids
            want_mask += [0] * offset + [1] * (len(ids) - offset)
        np.testing.assert_array_equal(np.asarray(b.split(split)), want_ids)
        if fmt == "text":
            assert b.loss_mask(split) is None  # nothing to mask: every token carries loss
        else:
            np.testing.assert_array_equal(np.asarray(b.loss_mask(split)), want_mask)
            assert 0 < b.manifest["splits"][split]["prompt_tokens"] < len(want_ids)
    assert b.manifest["given_splits"] == {"train": "train.jsonl", "val": "valid.jsonl",
                                          "test": "test.jsonl"}  # fmt: skip
    assert b.manifest["documents"] == {"train": 3, "val": 3, "test": 3}


def test_chat_records_are_rendered_with_the_chat_template(hf_model, tmp_path):
    # An independent reading of the fixture's template (tests/tiny_models.py CHAT_TEMPLATE):
    # "<|bos|>role: content\n" per message; the prompt is every message but the last with the
    # generation prompt "assistant: " (mlx-lm's offset is that rendering's length).
    from mlx_lm.utils import load_tokenizer

    folder = tmp_path / "jsonl"
    write_jsonl(folder / "train.jsonl", CHAT[1:2])
    b = prepare_data(folder, tmp_path / "data", tokenizer=hf_model)
    tok = load_tokenizer(hf_model)
    ids, mask = np.asarray(b.train).tolist(), np.asarray(b.loss_mask("train"))
    assert tok.decode(ids) == "<|bos|>user: Hi\n<|bos|>assistant: Hail!\n<|eos|>"
    prompt = tok.encode("<|bos|>user: Hi\nassistant: ", add_special_tokens=False)
    assert mask.tolist() == [0] * len(prompt) + [1] * (len(ids) - len(prompt))


def test_one_jsonl_file_is_split_by_record(hf_model, tmp_path):
    records = [{"prompt": f"Question {i}?", "completion": f"Answer {i}."} for i in range(40)]
    path = write_jsonl(tmp_path / "qa.jsonl", records)
    b = prepare_data(path, tmp_path / "data", tokenizer=hf_model, val_fraction=0.2,
                     test_fraction=0.2)  # fmt: skip
    from mlx_lm.utils import load_tokenizer

    tok = load_tokenizer(hf_model)
    seen = []
    for split in ("train", "val", "test"):
        text = tok.decode(np.asarray(b.split(split)).tolist())
        seen += [int(t.split("Question ")[1].split("?")[0]) for t in text.split("<|eos|>")[:-1]]
        assert len(b.loss_mask(split)) == len(b.split(split))
    assert sorted(seen) == list(range(40)) and b.manifest["documents"]["val"] > 0
    # the same call again reuses the shards (cached by content)
    again = prepare_data(path, tmp_path / "data", tokenizer=hf_model, val_fraction=0.2,
                         test_fraction=0.2)  # fmt: skip
    assert again.path == b.path and not again.built["shards"]


def test_chat_records_without_a_model_tokenizer_name_the_fix(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", CHAT)
    with pytest.raises(ValueError, match="--tokenizer MODEL_DIR"):
        prepare_data(path, tmp_path / "data", vocab_size=300)


def test_old_shards_have_no_mask(tiny_data):
    bundle = load_bundle(tiny_data.path)
    assert bundle.loss_mask("train") is None and bundle.loss_mask("val") is None
