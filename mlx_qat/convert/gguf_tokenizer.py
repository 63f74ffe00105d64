"""The tokenizer a GGUF file describes, built by `transformers`' own GGUF conversion.

A GGUF file stores the vocabulary, merges, scores, token types, special token ids
(`tokenizer.ggml.*`) and chat template (`tokenizer.chat_template`) as metadata; transformers'
`convert_gguf_tokenizer` turns them into a `tokenizers` backend. Its own entry point
(`from_pretrained(..., gguf_file=...)`) needs PyTorch, so here the metadata comes from the `gguf`
package's reader, renamed with transformers' own table (`GGUF_TOKENIZER_MAPPING`) as its
`get_gguf_tokenizer` does, and is saved into a scratch directory, from which
`convert.tokenizer.save_tokenizer` ships data files only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .errors import ConvertError

logger = logging.getLogger(__name__)

# Which special token each `tokenizer.ggml.*_id` names (transformers' `_SPECIAL_TOKENS`).
SPECIAL_TOKENS = {
    "bos_token": "bos_token_id",
    "eos_token": "eos_token_id",
    "unk_token": "unknown_token_id",
    "pad_token": "padding_token_id",
}


def _converter():
    """transformers' GGUF tokenizer conversion: `(mapping, convert)`, newest layout first."""
    try:  # transformers >= 5.2x: integrations/gguf/
        from transformers.integrations.gguf.gguf_tokenizer_mapping import (
            GGUF_TOKENIZER_MAPPING,
            convert_gguf_tokenizer,
        )
    except ImportError:
        try:  # older: integrations/ggml.py
            from transformers.integrations.ggml import (
                GGUF_TOKENIZER_MAPPING,
                convert_gguf_tokenizer,
            )
        except ImportError as e:
            raise ConvertError(
                f"this transformers has no GGUF tokenizer conversion ({e}); upgrade it: "
                "pip install -U transformers"
            ) from None
    return GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer


def tokenizer_fields(metadata: dict[str, Any]) -> tuple[dict, dict]:
    """`(tokenizer_dict, tokenizer_config)` from GGUF metadata, under transformers' names."""
    mapping, _ = _converter()
    grouped: dict[str, dict] = {}
    for group, renames in mapping.items():
        grouped[group] = {
            name: metadata[f"tokenizer.{key}"]
            for key, name in renames.items()
            if f"tokenizer.{key}" in metadata
        }
    tok, cfg = grouped.get("tokenizer", {}), dict(grouped.get("tokenizer_config", {}))
    if "tokens" not in tok:
        raise ConvertError(
            "the GGUF file has no tokenizer.ggml.tokens (no vocabulary), so no tokenizer can be "
            "built from it; convert the original Hugging Face model with mlx_lm.convert instead"
        )
    if tok.get("tokenizer_type") == "llama":
        # llama.cpp adds BOS to a sentencepiece vocabulary that does not say otherwise.
        cfg.setdefault("add_bos_token", True)
    for name, key in SPECIAL_TOKENS.items():
        i = metadata.get(f"tokenizer.ggml.{key}")
        cfg[name] = (
            tok["tokens"][int(i)] if i is not None and 0 <= int(i) < len(tok["tokens"]) else None
        )
    # Keys of the older mapping that are not tokenizer settings.
    for k in ("model_type", "bos_token_id", "eos_token_id", "unk_token_id", "pad_token_id"):
        cfg.pop(k, None)
    return tok, {k: v for k, v in cfg.items() if v is not None}


def build_tokenizer(metadata: dict[str, Any], architecture: str):
    """A `transformers` fast tokenizer from the GGUF vocabulary, special tokens, chat template."""
    from transformers import PreTrainedTokenizerFast

    _, convert = _converter()
    tok, cfg = tokenizer_fields(metadata)
    try:
        backend, extra = convert(architecture, tok)
    except (KeyError, ValueError) as e:
        raise ConvertError(
            f"transformers cannot build a tokenizer from this GGUF file (tokenizer.ggml.model "
            f"{tok.get('tokenizer_type')!r}, pre {tok.get('pre_tokenizer_type')!r}: {e}); "
            "convert the original Hugging Face model with mlx_lm.convert instead"
        ) from e
    return PreTrainedTokenizerFast(tokenizer_object=backend, **{**cfg, **(extra or {})})


def save_gguf_tokenizer(metadata: dict[str, Any], architecture: str, out_dir: Path) -> Path:
    """Build the tokenizer and `save_pretrained` it into `out_dir`; returns `out_dir`."""
    tokenizer = build_tokenizer(metadata, architecture)
    tokenizer.save_pretrained(str(out_dir))
    logger.info(
        "tokenizer: %d tokens (%s), chat template %s",
        len(tokenizer),
        metadata.get("tokenizer.ggml.model"),
        "yes" if metadata.get("tokenizer.chat_template") else "none",
    )
    return Path(out_dir)
