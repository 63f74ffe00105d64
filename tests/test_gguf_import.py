"""GGUF import (mlx_qat.convert.gguf*): a small llama GGUF written here with the `gguf` package
(llama.cpp's own writer and numpy quantizers) imports as the mlx-lm model built directly from
the same tensors: same logits, config.json round-trips, `mlx_lm.load` reads it and generates.

References are independent of the importer: the weights are ggml's grid from
`gguf.quants.dequantize` (llama.cpp's numpy transcription of its block formats), the q/k rows
are permuted with llama.cpp's `convert_hf_to_gguf.py` formula (transcribed below), and the
reference model is mlx-lm's `llama.Model` loaded with the Hugging Face-layout weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

gguf = pytest.importorskip(
    "gguf", reason="the gguf package is not installed (pip install 'mlx_qat[gguf]')"
)
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf import quants  # noqa: E402
from mlx_lm.models import llama  # noqa: E402

from mlx_qat.cli.convert import main as convert_main  # noqa: E402
from mlx_qat.convert import ConvertError  # noqa: E402
from mlx_qat.convert.gguf import import_gguf  # noqa: E402
from mlx_qat.convert.gguf_read import QTensor, read_header  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CFG = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "rms_norm_eps": 1e-5,
    "rope_theta": 50000.0,
    "max_position_embeddings": 256,
}
# Weight types of one file: every format the importer reads through mx.load.
MIXED = {
    "token_embd": T.Q8_0,
    "attn_q": T.Q4_0,
    "attn_k": T.Q4_1,
    "attn_v": T.Q8_0,
    "attn_output": T.F16,
    "ffn_gate": T.Q4_1,
    "ffn_up": T.Q4_0,
    "ffn_down": T.F32,
    "output": T.F16,
}
HF_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TEXT = "the cat sat on the mat.\n\nThen, in 1999, an ant ate\t8 apples: ünïcode ok!"


def byte_level_vocab() -> tuple[list[str], list[int], list[str]]:
    """A GPT-2-style byte-level BPE vocabulary: 3 control tokens, 256 bytes, a few merges."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    byte_tokens = sorted(bytes_to_unicode().values(), key=lambda c: ord(c))
    merges = ["Ġ t", "h e", "Ġt he", "a t", "Ġ a", "o n", "Ġ c", "Ġc at", "Ġ s", "Ġs at"]
    merged = [m.replace(" ", "") for m in merges]
    tokens = specials + byte_tokens + merged
    types = [3] * len(specials) + [1] * (len(tokens) - len(specials))
    return tokens, types, merges


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py, LlamaModel.permute: HF rotary rows → ggml's order."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def ggml_grid(w: np.ndarray, kind: T) -> np.ndarray:
    """What a `kind` tensor of `w` holds, by the gguf package's own numpy (de)quantizer."""
    if kind == T.F32:
        return w.astype(np.float32)
    if kind == T.F16:
        return w.astype(np.float16).astype(np.float32)
    return quants.dequantize(quants.quantize(w, kind), kind).astype(np.float32)


def encode(w: np.ndarray, kind: T):
    if kind == T.F32:
        return w.astype(np.float32), None
    if kind == T.F16:
        return w.astype(np.float16), None
    return quants.quantize(w, kind), kind


def write_gguf(path, types=MIXED, tie=True, arch="llama", seed=0, extra=None):
    """A llama GGUF of random HF-layout weights; returns the reference (grid) weights by mlx-lm
    name and the config the file describes."""
    rng = np.random.default_rng(seed)
    tokens, token_types, merges = byte_level_vocab()
    cfg = dict(CFG, vocab_size=len(tokens), tie_word_embeddings=tie)
    h, f, d = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    nq, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    shapes = {
        "attn_q": (nq * d, h),
        "attn_k": (nkv * d, h),
        "attn_v": (nkv * d, h),
        "attn_output": (h, nq * d),
        "ffn_gate": (f, h),
        "ffn_up": (f, h),
        "ffn_down": (h, f),
    }
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(h)
    w.add_feed_forward_length(f)
    w.add_head_count(nq)
    w.add_head_count_kv(nkv)
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_dimension_count(d)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(TEMPLATE)
    ref: dict[str, np.ndarray] = {}

    def add(name, hf_name, arr, kind, n_head=None):
        ref[hf_name] = ggml_grid(arr, kind)  # row-wise blocks: the grid commutes with permute
        stored = llama_cpp_permute(arr, n_head) if n_head else arr
        data, raw = encode(stored, kind)
        w.add_tensor(name, data, raw_dtype=raw)

    emb = rng.standard_normal((len(tokens), h)).astype(np.float32) * 0.5
    add("token_embd.weight", "model.embed_tokens.weight", emb, types["token_embd"])
    for i in range(cfg["num_hidden_layers"]):
        for part, shape in shapes.items():
            arr = (rng.standard_normal(shape) / np.sqrt(shape[1])).astype(np.float32)
            n_head = {"attn_q": nq, "attn_k": nkv}.get(part)
            add(
                f"blk.{i}.{part}.weight",
                f"model.layers.{i}.{HF_NAMES[part]}.weight",
                arr,
                types[part],
                n_head,
            )
        for part in ("attn_norm", "ffn_norm"):
            arr = (1 + 0.1 * rng.standard_normal(h)).astype(np.float32)
            add(f"blk.{i}.{part}.weight", f"model.layers.{i}.{HF_NAMES[part]}.weight", arr, T.F32)
    add("output_norm.weight", "model.norm.weight", np.ones(h, np.float32), T.F32)
    if not tie:
        out = (rng.standard_normal((len(tokens), h)) * 0.1).astype(np.float32)
        add("output.weight", "lm_head.weight", out, types["output"])
    for name, arr in (extra or {}).items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return ref, cfg


def reference_model(ref: dict, cfg: dict):
    """mlx-lm's llama built directly from the HF-layout grid weights."""
    model = llama.Model(llama.ModelArgs.from_dict(cfg))
    model.load_weights([(k, mx.array(v)) for k, v in ref.items()], strict=True)
    return model


def logits(model, ids=(1, 70, 80, 90, 100, 5, 7, 200, 3)) -> np.ndarray:
    out = model(mx.array([list(ids)])).astype(mx.float32)
    return np.array(out)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A tied and an untied file with every mx.load type, and their references."""
    d = tmp_path_factory.mktemp("gguf")
    tied, untied = d / "tied.gguf", d / "untied.gguf"
    return {"tied": (tied, *write_gguf(tied)), "untied": (untied, *write_gguf(untied, tie=False))}


@pytest.mark.parametrize("which", ["tied", "untied"])
def test_float_import_gives_the_reference_logits(mixed, tmp_path, which):
    path, ref, cfg = mixed[which]
    r = import_gguf(path, tmp_path / "out")
    from mlx_lm.utils import load_model

    model, config = load_model(tmp_path / "out")
    np.testing.assert_allclose(logits(model), logits(reference_model(ref, cfg)), atol=1e-5)
    assert r.method == "float" and r.dtype == "float32" and r.check["passed"]
    assert config["tie_word_embeddings"] is (which == "tied")
    # The weights are ggml's grid bit for bit (float32 holds it exactly).
    w = dict(tree_flatten(model.parameters()))
    for k, v in ref.items():
        if k in w:
            np.testing.assert_array_equal(np.array(w[k]), v, err_msg=k)


def test_config_json_round_trips(mixed, tmp_path):
    path, _, cfg = mixed["untied"]
    import_gguf(path, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    for key, value in cfg.items():
        assert config[key] == value, key
    assert config["bos_token_id"] == 1 and config["eos_token_id"] == 2
    assert llama.ModelArgs.from_dict(config) == llama.ModelArgs.from_dict(cfg)
    # The model card: mlx-lm's Hub metadata (as `create_model_card` sets it), the source.
    from huggingface_hub import ModelCard

    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.library_name == "mlx" and card.data.pipeline_tag == "text-generation"
    assert card.data.tags == ["mlx", "mlx_qat", "gguf"]
    assert f"from the GGUF file `{path.name}`" in card.text and "bit for bit" in card.text


def test_quantized_import_keeps_ggml_grid(mixed, tmp_path):
    path, ref, cfg = mixed["untied"]
    r = import_gguf(path, tmp_path / "q", quantize=True, dtype="float32")
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    q = config["quantization"]
    assert (q["group_size"], q["bits"]) == (32, 4)
    # Q8_0 layers differ from the most common (4-bit) format: named per path.
    assert q["model.embed_tokens"]["bits"] == 8
    assert q["model.layers.0.self_attn.v_proj"]["bits"] == 8
    from mlx_lm.utils import load_model

    model, _ = load_model(tmp_path / "q")
    assert model.model.layers[0].self_attn.q_proj.bits == 4
    assert not hasattr(model.model.layers[0].self_attn.o_proj, "scales")  # F16 stays float
    # float32 scales: the grid exactly (float16 ones would move these logits by ~2e-3).
    np.testing.assert_allclose(logits(model), logits(reference_model(ref, cfg)), atol=1e-4)
    assert r.method == "quantized" and r.bits_per_weight < 32


def test_mlx_dequantize_is_ggml_grid(tmp_path):
    """mx.load's Q4_0/Q4_1/Q8_0 triplets, dequantized in float32, are gguf's numpy grid exactly,
    on weights of very different magnitudes."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((16, 256)).astype(np.float32) * np.logspace(-3, 2, 16)[:, None]
    for kind in (T.Q4_0, T.Q4_1, T.Q8_0):
        data = quants.quantize(w, kind)
        ref = quants.dequantize(data, kind)
        path = tmp_path / f"{kind.name}.gguf"
        g = gguf.GGUFWriter(str(path), "llama")
        g.add_tensor("x.weight", data, raw_dtype=kind)
        g.write_header_to_file()
        g.write_kv_data_to_file()
        g.write_tensors_to_file()
        g.close()
        a = mx.load(str(path))
        t = QTensor(a["x.weight"], a["x.scales"], a["x.biases"], 8 if kind == T.Q8_0 else 4)
        np.testing.assert_array_equal(np.array(t.dequantize()), ref, err_msg=kind.name)


def test_other_types_go_through_numpy(tmp_path):
    """BF16 and Q5_0 (which mx.load narrows or refuses) import as float through gguf.quants;
    keeping them quantized is refused by name."""
    types = dict(MIXED, attn_q=T.Q5_0, ffn_up=T.BF16, attn_k=T.Q5_1)
    path = tmp_path / "q5.gguf"
    ref, cfg = write_gguf(path, types=types, tie=False)
    from mlx_lm.utils import load_model

    import_gguf(path, tmp_path / "out")
    model, _ = load_model(tmp_path / "out")
    np.testing.assert_allclose(logits(model), logits(reference_model(ref, cfg)), atol=1e-5)
    with pytest.raises(ConvertError, match="Q5_0.*cannot hold exactly.*drop -q"):
        import_gguf(path, tmp_path / "q", quantize=True)


def test_tokenizer_round_trips_and_loads_with_mlx_lm(mixed, tmp_path):
    path, _, _ = mixed["tied"]
    import_gguf(path, tmp_path / "out", quantize=True)
    from mlx_lm import generate, load

    model, tok = load(str(tmp_path / "out"))
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT
    assert tok.encode(" the cat sat") == [261, 266, 268]  # merges: Ġthe, Ġcat, Ġsat
    assert tok.eos_token_id == 2 and tok.bos_token == "<|im_start|>"
    assert tok.encode("<|im_end|>") == [2]  # control tokens stay whole
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert prompt.startswith("<|im_start|>user\nhi<|im_end|>")
    assert isinstance(generate(model, tok, prompt="the cat", max_tokens=3), str)


@pytest.mark.slow
def test_cli_import_then_generate_in_a_fresh_process(mixed, tmp_path):
    path, _, _ = mixed["tied"]
    out = tmp_path / "out"
    assert convert_main([str(path), "--mlx-path", str(out), "--quiet"]) == 0
    assert (out / "convert.yaml").is_file() and (out / "mlx_qat.json").is_file()
    code = "import sys; from mlx_lm import load, generate; m, t = load(sys.argv[1]); "
    code += "print(generate(m, t, 'the cat', max_tokens=4))"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out)], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr


def test_cli_routes_gguf_and_refuses_qat_flags(mixed, tmp_path, capsys):
    path, _, _ = mixed["tied"]
    out = tmp_path / "out"
    assert convert_main([str(path), "--mlx-path", str(out), "--quiet"]) == 0
    assert (out / "convert.yaml").is_file() and (out / "config.json").is_file()
    assert convert_main([str(path), "--mlx-path", str(out), "--quiet"]) == 2  # exists
    assert "--force" in capsys.readouterr().err
    assert convert_main([str(path), "--mlx-path", str(out), "--force", "--ptq"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--ptq: not for a GGUF input" in err


def test_bad_inputs_are_one_clear_error(tmp_path, capsys):
    fake = tmp_path / "notes.gguf"
    fake.write_text("hello, not a model")
    with pytest.raises(ConvertError, match="not a GGUF file.*llama.cpp"):
        import_gguf(fake, tmp_path / "a")
    assert convert_main([str(fake), "--mlx-path", str(tmp_path / "a")]) == 2
    assert "not a GGUF file" in capsys.readouterr().err

    qwen = tmp_path / "qwen.gguf"
    write_gguf(qwen, arch="qwen2")
    with pytest.raises(ConvertError, match="architecture 'qwen2' is not supported.*mlx_lm.convert"):
        import_gguf(qwen, tmp_path / "b")

    odd = tmp_path / "odd.gguf"
    write_gguf(odd, extra={"blk.0.attn_q.extra": np.arange(32, dtype=np.int8)})
    assert read_header(odd).types["blk.0.attn_q.extra"] == "I8"
    with pytest.raises(ConvertError, match="ggml type I8.*llama-quantize"):
        import_gguf(odd, tmp_path / "c")
    assert not (tmp_path / "c").exists() and not list(tmp_path.glob("c.tmp-*"))


def test_sentencepiece_vocabulary_adds_bos_and_falls_back_to_bytes():
    """A `llama`-type (sentencepiece) GGUF vocabulary, as Llama 2 / Mistral files carry: BOS
    added as llama.cpp does, unknown characters spelled with byte tokens, text round-trips."""
    from mlx_qat.convert.gguf import build_tokenizer

    pieces = ["▁", "t", "h", "e", "▁t", "he", "▁the", "c", "a", "▁c", "at", "▁cat", "s", "▁s"]
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{i:02X}>" for i in range(256)), *pieces]
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": [0.0] * 259 + [-float(i) for i in range(len(pieces))],
        "tokenizer.ggml.token_type": [2, 3, 3] + [6] * 256 + [1] * len(pieces),
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
    }
    tok = build_tokenizer(meta, "llama")
    text = "the cat sat, ünï 9\n"
    ids = tok.encode(text)
    assert ids[:3] == [1, tokens.index("▁the"), tokens.index("▁cat")]
    assert tokens.index("<0xC3>") in ids  # "ü" as UTF-8 bytes
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert (tok.bos_token, tok.eos_token, tok.unk_token) == ("<s>", "</s>", "<unk>")
