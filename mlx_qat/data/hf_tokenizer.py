"""A Hugging Face / mlx-lm model's own tokenizer, as `mlx_qat.data` encodes with it.

Loaded with mlx-lm's loader (`mlx_lm.utils.load_tokenizer`, what `mlx_lm.load` calls), and
used exactly as mlx-lm uses it on a prompt:

* a document becomes ``tokenizer.encode(text)``: the tokenizer's own special tokens included,
  i.e. BOS first for tokenizers that add one (Llama, Mistral, Gemma: what ``mlx_lm.generate``
  feeds the model), none for those that do not (GPT-2 style, Qwen). Special-token text in a
  document (``"<|endoftext|>"``) is read as that special token, as ``encode`` reads it;
* the tokenizer's ``eos_token_id`` follows every document (unless ``encode`` already ended
  it with EOS), so the model sees the document boundaries it was pretrained with.

`encode_batch` gives the same ids as ``encode`` per text, through the tokenizer's batch call
(parallel in the Rust `tokenizers` library) when its class does not override ``encode``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


class HFTokenizer:
    """An HF tokenizer directory (see the module): ``encode``/``decode`` plus the special ids.

    ``sha256`` is `tokenizer_sha256` of the directory (token shards record it and refuse
    another tokenizer). Raises ValueError naming the directory when mlx-lm cannot load it or
    it has no EOS token.
    """

    kind = "hf"

    def __init__(self, path: str | os.PathLike):
        from mlx_lm.utils import load_tokenizer
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase

        from ..mlxlm_compat import hf_tokenizer
        from .tokenizer_dir import tokenizer_sha256

        self.dir = Path(path)
        try:
            self.wrapper = load_tokenizer(self.dir)
        except Exception as e:  # transformers raises many kinds
            raise ValueError(
                f"tokenizer {self.dir}: mlx-lm cannot load it ({type(e).__name__}: {e}); give "
                "a directory `mlx_lm.load` reads (tokenizer.json, tokenizer_config.json, ...)"
            ) from e
        self.hf = hf_tokenizer(self.wrapper)
        if self.hf.eos_token_id is None:
            raise ValueError(
                f"tokenizer {self.dir}: has no EOS token (eos_token in tokenizer_config.json); "
                "token shards end every document with EOS"
            )
        self.sha256 = tokenizer_sha256(self.dir)
        cls = type(self.hf)
        self._batchable = (
            cls.encode is PreTrainedTokenizerBase.encode
            and cls.__call__ is PreTrainedTokenizerBase.__call__
        )

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (``len(tokenizer)``)."""
        return len(self.hf)

    @property
    def bos_id(self) -> int | None:
        """BOS id, or None; in the shards only where ``encode`` adds it."""
        return self.hf.bos_token_id

    @property
    def eos_id(self) -> int:
        """EOS id, after every document in the shards."""
        return int(self.hf.eos_token_id)

    def encode(self, text: str) -> list[int]:
        """``tokenizer.encode(text)`` as mlx-lm calls it (special tokens added)."""
        return list(self.wrapper.encode(text))

    def encode_batch(self, texts: Sequence[str], num_threads: int | None = None) -> list[list[int]]:
        """`encode` of each text (``num_threads`` is unused: the Rust library parallelises)."""
        if not self._batchable:
            return [self.encode(t) for t in texts]
        out = self.hf(list(texts), verbose=False, return_attention_mask=False)
        return [list(ids) for ids in out["input_ids"]]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` (special tokens included, as written)."""
        return self.hf.decode([int(i) for i in ids])

    def __repr__(self) -> str:
        return f"HFTokenizer({str(self.dir)!r}, vocab_size={self.vocab_size})"
