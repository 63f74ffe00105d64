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
