"""Data pipeline: corpora -> documents -> train/val/test split -> BPE tokenizer -> token
shards -> batches.

Typical use::

    from mlx_qat.data import prepare_data, TokenBatches, eval_batches

    bundle = prepare_data("../shared/data", "data/", vocab_size=4096)   # cached after 1st call
    train = TokenBatches(bundle.train, batch_size=32, seq_len=256, seed=0)
    x = train.batch(step)                       # (32, 257) int32; inputs x[:, :-1], targets x[:, 1:]
    val = eval_batches(bundle.val, batch_size=32, seq_len=256, max_batches=50)

The validation split (``val_fraction``) is for curves and choices; the test split
(``test_fraction``, held out by the same document hash) is only reported.

Command line: ``python -m mlx_qat data --input ../shared/data --out data/`` (see ``--help``).
A model's own tokenizer instead of a trained one: ``prepare_data(..., tokenizer=MODEL_DIR)``
(any Hugging Face / mlx-lm model directory; ``--tokenizer MODEL_DIR``).
"""

from .batches import EvalBatches, TokenBatches, eval_batches
from .bundle import DataBundle, load_bundle
from .corpus import read_documents, resolve_files, split_documents
from .hf import save_hf_tokenizer
from .shakespeare import default_corpus, fetch_shakespeare
from .shards import encode_documents, prepare_data
from .tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer, train_tokenizer
from .tokenizer_dir import load_tokenizer, tokenizer_kind, tokenizer_sha256

__all__ = [
    "BOS_ID", "EOS_ID", "PAD_ID", "UNK_ID", "DataBundle", "EvalBatches", "TokenBatches",
    "Tokenizer", "default_corpus", "encode_documents", "eval_batches", "fetch_shakespeare",
    "load_bundle", "load_tokenizer", "prepare_data", "read_documents", "resolve_files",
    "save_hf_tokenizer", "split_documents", "tokenizer_kind", "tokenizer_sha256",
    "train_tokenizer",
]  # fmt: skip
