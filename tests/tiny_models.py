"""Tiny float32 mlx-lm models shared by the layer, patch and sizing tests."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import gemma3_text, llama, qwen3, qwen3_moe


def tiny_model(
    arch: str = "llama", seed: int = 0, tie: bool = False, vocab: int = 256
) -> nn.Module:
    """A 2-layer, width-64 model of an mlx-lm architecture (float32)."""
    mx.random.seed(seed)
    common = dict(
        hidden_size=64,
        num_hidden_layers=2,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        vocab_size=vocab,
    )
    if arch == "llama":
        m = llama.Model(llama.ModelArgs(model_type="llama", tie_word_embeddings=tie, **common))
    elif arch == "qwen3":
        args = qwen3.ModelArgs(
            model_type="qwen3",
            max_position_embeddings=512,
            rope_theta=10000.0,
            head_dim=16,
            tie_word_embeddings=tie,
            **common,
        )
        m = qwen3.Model(args)
    elif arch == "gemma3_text":
        args = gemma3_text.ModelArgs(
            model_type="gemma3_text",
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=4,
            sliding_window_pattern=2,
            **common,
        )
        m = gemma3_text.Model(args)
    elif arch == "qwen3_moe":
        args = qwen3_moe.ModelArgs(
            model_type="qwen3_moe",
            num_experts=4,
            num_experts_per_tok=2,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            moe_intermediate_size=64,
            head_dim=16,
            rope_theta=10000.0,
            tie_word_embeddings=tie,
            max_position_embeddings=512,
            norm_topk_prob=True,
            **common,
        )
        m = qwen3_moe.Model(args)
    else:
        raise ValueError(arch)
    mx.eval(m.parameters())
    return m


def tokens(vocab: int = 256, shape=(2, 12), seed: int = 1) -> mx.array:
    return mx.random.randint(0, vocab, shape, key=mx.random.key(seed))


# --- model directories: a float mlx-lm model dir, and a tiny Hugging Face tokenizer ----------

CHAT_TEMPLATE = (
    "{% for m in messages %}<|bos|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def hf_tokenizer_dir(out, vocab: int = 512, chars: int = 60_000):
    """A byte-level BPE Hugging Face tokenizer of `vocab` ids, trained on the start of the
    committed Shakespeare sample, saved with `save_pretrained` into `out`: BOS `<|bos|>` added
    by `encode` (as Llama's tokenizer adds `<s>`), EOS `<|eos|>`, a chat template. Returns
    `out`."""
    import gzip
    from pathlib import Path

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    text_file = Path(__file__).parent / "fixtures" / "corpus" / "shakespeare.txt.gz"
    with gzip.open(text_file, "rt", encoding="utf-8") as f:
        text = f.read(chars)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<|bos|>", "<|eos|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text.split("\n\n"), trainer)
    assert tok.get_vocab_size() == vocab, tok.get_vocab_size()
    bos = tok.token_to_id("<|bos|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", special_tokens=[("<|bos|>", bos)]
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", chat_template=CHAT_TEMPLATE
    )
    hf.save_pretrained(str(out))
    return Path(out)


def float_model_dir(out, vocab: int = 512, seed: int = 7, tokenizer=None):
    """A float mlx-lm model directory (config.json + model.safetensors) of the `d2` preset
    (width 64, 2 layers) with `vocab` ids, random weights from `seed`; with `tokenizer` (a
    directory), its files are copied in too, as a Hugging Face model ships its own. Returns
    (`out`, the model)."""
    import json
    import shutil
    from pathlib import Path

    from mlx.utils import tree_flatten

    from mlx_qat.models import model_from_config, preset_config

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = preset_config("d2", vocab)
    mx.random.seed(seed)
    model = model_from_config(cfg)
    mx.eval(model.parameters())
    mx.save_safetensors(str(out / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (out / "config.json").write_text(json.dumps(cfg))
    if tokenizer is not None:
        for f in Path(tokenizer).iterdir():
            shutil.copy(f, out / f.name)
    return out, model
