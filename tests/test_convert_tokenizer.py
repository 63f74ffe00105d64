"""The tokenizer convert ships (mlx_qat.convert.tokenizer): data files only, never code; the
run's own tokenizer, checked by hash; a vocabulary that fits the model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest
from test_convert_fixtures import CORPUS, REPO

from mlx_qat.convert import ConvertError, convert
from mlx_qat.data import prepare_data

mx.set_default_device(mx.cpu)

EVIL = "open(__file__ + '.ran', 'w').write('remote code ran')\n"


@pytest.fixture(scope="module")
def other_data(tmp_path_factory):
    """Prepared data with another tokenizer (1024 pieces) from the same corpus sample."""
    return prepare_data(CORPUS, tmp_path_factory.mktemp("other_data"), vocab_size=1024)


@pytest.fixture
def run(tmp_path, runs):
    return runs.make(tmp_path / "run", steps=1)


def add_remote_code(tok_dir, config_json=None):
    """Put code and `auto_map` into a tokenizer (and model) directory, as a hub repo can."""
    (tok_dir / "tokenization_evil.py").write_text(EVIL)
    cfg_file = tok_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    cfg_file.write_text(json.dumps(cfg))
    if config_json is not None:
        config = json.loads(config_json.read_text())
        config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
        config_json.write_text(json.dumps(config))
        (tok_dir / "modeling_evil.py").write_text(EVIL)


def assert_no_code(out):
    assert not list(out.glob("*.py")) and not list(out.glob("*.ran"))
    assert "auto_map" not in json.loads((out / "tokenizer_config.json").read_text())
    assert "auto_map" not in json.loads((out / "config.json").read_text())


def fresh_generate(out) -> None:
    code = "import sys; from mlx_lm import load, generate; m, t = load(sys.argv[1]); "
    code += "print(generate(m, t, 'The king', max_tokens=4))"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out)], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr


def test_tokenizer_dir_code_is_never_shipped(run, tmp_path):
    # An HF-format copy of the run's own tokenizer, with remote code added.
    hf = tmp_path / "hf_tokenizer"
    shutil.copytree(run.path / "tokenizer", hf)
    (hf / "tokenizer_meta.json").unlink()
    add_remote_code(hf)
    out = tmp_path / "out"
    result = convert(run.path, out, tokenizer=hf, parity_batches=1)
    assert result.parity["passed"]
    assert_no_code(out)
    assert {p.name for p in out.iterdir()} >= {"tokenizer.json", "tokenizer_config.json"}
    fresh_generate(out)


def test_mlx_model_code_is_never_shipped(run, tmp_path, tiny_data):
    float_dir = tmp_path / "float_model"
    convert(run.path, float_dir, dequantize=True, parity_check=False)
    add_remote_code(float_dir, config_json=float_dir / "config.json")
    out = tmp_path / "out"
    convert(float_dir, out, ptq=True, parity_data=tiny_data.path, parity_batches=1)
    assert_no_code(out)
    fresh_generate(out)


def test_stale_run_tokenizer_is_refused(run, tmp_path, tiny_data, other_data):
    # A failed first attempt left tokenizer/ of other data (1024 pieces) in the run.
    shutil.rmtree(run.path / "tokenizer")
    shutil.copytree(other_data.tokenizer_dir, run.path / "tokenizer")
    with pytest.raises(
        ConvertError, match=r"is not the tokenizer .* was trained with.*--tokenizer"
    ):
        convert(run.path, tmp_path / "out", parity_batches=1)
    assert not (tmp_path / "out").exists()
    # The trainer records the data's tokenizer hash in every checkpoint's state.json.
    with pytest.raises(ConvertError, match=r"sha256 .*\(recorded in .*state.json\)"):
        convert(run.path, tmp_path / "out", tokenizer=other_data.tokenizer_dir)
    result = convert(run.path, tmp_path / "out", tokenizer=tiny_data.tokenizer_dir)
    assert result.parity["passed"]


def test_recorded_tokenizer_hash_in_state_wins(run, tmp_path, tiny_data):
    from mlx_qat.convert.api import resolve_source
    from mlx_qat.convert.tokenizer import tokenizer_sha256

    source = resolve_source(run.path)
    want = tokenizer_sha256(tiny_data.tokenizer_dir)
    # What the trainer records (issue 12, case 4) is read from state.json.
    assert source.recorded_tokenizer() == (want, str(source.path / "state.json"))
    # A checkpoint from before the trainer recorded it: the manifest of its shards.
    del source.state["tokenizer_sha256"]
    assert source.recorded_tokenizer() == (want, str(tiny_data.path / "manifest.json"))
    source.state["tokenizer_sha256"] = "0" * 64  # the state's record wins over the manifest
    assert source.recorded_tokenizer() == ("0" * 64, str(source.path / "state.json"))


def test_tokenizer_larger_than_the_model_vocab_is_refused(run, tmp_path, other_data):
    float_dir = tmp_path / "float_model"  # an mlx-lm model: no recorded tokenizer hash
    convert(run.path, float_dir, dequantize=True, parity_check=False)
    with pytest.raises(ConvertError, match=r"has 1024 tokens but the model's vocab_size is 512"):
        convert(
            float_dir,
            tmp_path / "out",
            ptq=True,
            tokenizer=other_data.tokenizer_dir,
            parity_check=False,
        )
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.tmp-*"))


def test_fine_tune_of_a_model_with_its_own_tokenizer_ships_it_unchanged(
    hf_model, tiny_data, tmp_path
):
    """QAT fine-tune of a model dir with its own Hugging Face tokenizer, on data that
    tokenizer made; the export holds the model's tokenizer files and chat template byte for
    byte, and stock mlx-lm loads and generates with it in a fresh process."""
    from mlx_lm.tokenizer_utils import load as mlx_lm_tokenizer
    from test_convert_fixtures import run_cli

    from mlx_qat.convert.tokenizer import is_tokenizer_file
    from mlx_qat.data import tokenizer_sha256
    from mlx_qat.eval import evaluate_checkpoint
    from mlx_qat.train import TrainConfig, train

    data = prepare_data(CORPUS, tmp_path / "data", tokenizer=hf_model)
    run = tmp_path / "run"
    train(
        TrainConfig(
            out=str(run), data=[str(data.path)], model=str(hf_model), tokens=3 * 4 * 64,
            batch_size=4, seq_len=64, qat_fraction=1.0, lr=3e-3, warmup_steps=0,
            eval_every=0, eval_batches=2, final_eval_batches=2, quiet=True, cache_limit_mb=256,
        )
    )  # fmt: skip
    out = tmp_path / "out"
    run_cli(run, "--mlx-path", out, "--parity-batches", "1")
    assert json.loads((out / "config.json").read_text())["quantization"]["bits"] == 4
    own = sorted(f.name for f in hf_model.iterdir() if is_tokenizer_file(f.name))
    assert own == ["chat_template.jinja", "tokenizer.json", "tokenizer_config.json"]
    assert sorted(f.name for f in out.iterdir() if is_tokenizer_file(f.name)) == own
    for name in own:
        assert (out / name).read_bytes() == (hf_model / name).read_bytes(), name
    assert tokenizer_sha256(out) == tokenizer_sha256(hf_model)

    text, chat = "To be, or not to be", [{"role": "user", "content": "Who is there?"}]
    code = (
        "import json, sys; from mlx_lm import load, generate; m, t = load(sys.argv[1]); "
        "g = generate(m, t, 'The king', max_tokens=4); "
        "c = t.apply_chat_template(json.loads(sys.argv[3]), add_generation_prompt=True, "
        "tokenize=False); print(json.dumps({'ids': t.encode(sys.argv[2]), 'chat': c, 'gen': g}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out), text, json.dumps(chat)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    ref = mlx_lm_tokenizer(hf_model)
    assert got["ids"] == ref.encode(text) and got["ids"][0] == ref.bos_token_id
    assert got["chat"] == ref.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert isinstance(got["gen"], str)
    # Text given as parity data is encoded as the shards were (BOS first here, EOS after).
    from mlx_qat.convert.parity import load_parity_data

    docs = ["The king is dead.", "Long live the king!"]
    (tmp_path / "val.txt").write_text("\n\n".join(docs) + "\n")
    par = load_parity_data(
        tmp_path / "val.txt", seq_len=64, batch_size=1, max_batches=1, vocab_size=512,
        tokenizer_dir=out,
    )  # fmt: skip
    want = [i for d in docs for i in [*ref.encode(d), ref.eos_token_id]]
    assert np.array(par.batches[0])[0].tolist() == want
    # Data and tokenizers of another tokenizer are refused downstream too.
    with pytest.raises(ValueError, match=r"encoded with the tokenizer sha256 .* trained with"):
        evaluate_checkpoint(run, data=str(tiny_data.path))
    with pytest.raises(ConvertError, match=r"is not the tokenizer .* was trained with"):
        convert(run, tmp_path / "out2", tokenizer=tiny_data.tokenizer_dir, parity_check=False)
