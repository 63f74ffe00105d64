"""Writing an mlx-lm model directory, atomically.

The layout is mlx-lm's own (`mlx_lm.utils.save_model` / `save_config`): `model.safetensors`,
or `model-0000i-of-0000n.safetensors` shards above `max_file_size_gb`, always with
`model.safetensors.index.json`; `config.json` sorted, with `"quantization"` mirrored into
`"quantization_config"`; tokenizer files; `README.md`.

`staged_dir` builds everything under `<mlx_path>.tmp-<pid>` and renames it into place only when
the block finishes without error. `config.json` is written after the weights and the
tokenizer, so even the temporary directory is not loadable by `mlx_lm.load` until it is whole.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..fileio import fsync_path
from .errors import ConvertError

logger = logging.getLogger(__name__)

MAX_FILE_SIZE_GB = 5.0  # mlx-lm's default shard size (mlx_lm.utils.MAX_FILE_SIZE_GB)
INDEX = "model.safetensors.index.json"


def tmp_dir_for(final: Path) -> Path:
    """`<final>.tmp-<pid>`, beside `final` so the rename stays on one file system."""
    return final.with_name(f"{final.name}.tmp-{os.getpid()}")


def check_output(final: Path, force: bool, source: Path | None = None) -> None:
    """Refuse to overwrite an existing output (unless `force`) or the input itself."""
    if source is not None:
        src, dst = source.resolve(), final.resolve()
        if dst == src or src in dst.parents or dst in src.parents:
            raise ConvertError(
                f"--mlx-path {final} overlaps the input {source}; choose another output path"
            )
    if final.exists() and not force:
        raise ConvertError(
            f"{final} already exists; pass --force to replace it or choose another --mlx-path"
        )


@contextlib.contextmanager
def staged_dir(final: Path, force: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces `final`, on error it is removed."""
    final = Path(final)
    check_output(final, force)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir_for(final)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, final: Path) -> None:
    old = None
    if final.exists() or final.is_symlink():
        # Move the old output aside first: os.replace cannot replace a non-empty directory.
        old = final.with_name(f"{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_path(final.parent)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def _fsync_tree(root: Path) -> None:
    for p in root.iterdir():
        if p.is_file():
            fsync_path(p)
    fsync_path(root)


def make_shards(weights: dict[str, mx.array], max_bytes: int) -> list[dict[str, mx.array]]:
    """Split weights into shards of at most `max_bytes` (a bigger tensor gets its own shard)."""
    shards: list[dict[str, mx.array]] = []
    size = 0
    for k, v in weights.items():
        if not shards or size + v.nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += v.nbytes
    return shards


def save_weights(path: Path, model: nn.Module, max_file_size_gb: float = MAX_FILE_SIZE_GB) -> dict:
    """Save `model.parameters()` as mlx-lm does (shards + index); return the index dict."""
    from mlx_lm.utils import get_total_parameters

    weights = dict(tree_flatten(model.parameters()))
    shards = make_shards(weights, int(max_file_size_gb * (1 << 30)))
    n = len(shards)
    fmt = "model-{:05d}-of-{:05d}.safetensors" if n > 1 else "model.safetensors"
    weight_map: dict[str, str] = {}
    for i, shard in enumerate(shards):
        name = fmt.format(i + 1, n)
        mx.save_safetensors(str(path / name), shard, metadata={"format": "mlx"})
        weight_map.update(dict.fromkeys(shard, name))
    index = {
        "metadata": {
            "total_size": sum(v.nbytes for v in weights.values()),
            "total_parameters": get_total_parameters(model),
        },
        "weight_map": dict(sorted(weight_map.items())),
    }
    (path / INDEX).write_text(json.dumps(index, indent=4), encoding="utf-8")
    return index


def save_config(path: Path, config: dict) -> None:
    """mlx-lm's `save_config`: sorted keys, "quantization" mirrored to "quantization_config"."""
    from mlx_lm.utils import save_config as _save_config

    _save_config(dict(config), config_path=path / "config.json")


def save_tokenizer(path: Path, tokenizer_dir: Path | None) -> None:
    """Tokenizer files `mlx_lm.load` needs, from an mlx_qat tokenizer or an HF/mlx-lm dir.

    An `mlx_qat.data` tokenizer (sentencepiece `tokenizer.model` + `tokenizer_meta.json`) goes
    through `save_hf_tokenizer`; anything else is loaded and re-saved by mlx-lm's tokenizer
    loader, as `mlx_lm.convert` does.
    """
    if tokenizer_dir is None:
        raise ConvertError(
            "no tokenizer: the checkpoint is not inside a run directory with tokenizer/; "
            "pass --tokenizer DIR (the run's tokenizer/ or any Hugging Face tokenizer dir)"
        )
    tokenizer_dir = Path(tokenizer_dir)
    if not tokenizer_dir.is_dir():
        raise ConvertError(f"--tokenizer {tokenizer_dir}: no such directory")
    sentencepiece = (tokenizer_dir / "tokenizer.model").is_file() and (
        (tokenizer_dir / "tokenizer_meta.json").is_file()
        or not (tokenizer_dir / "tokenizer_config.json").is_file()
    )
    if sentencepiece:
        from ..data import save_hf_tokenizer

        try:
            save_hf_tokenizer(tokenizer_dir, path)
        except (FileNotFoundError, OSError, RuntimeError) as e:
            raise ConvertError(f"tokenizer {tokenizer_dir}: cannot convert it ({e})") from e
        return
    from mlx_lm.utils import load_tokenizer

    try:
        load_tokenizer(tokenizer_dir).save_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise ConvertError(f"tokenizer {tokenizer_dir}: mlx-lm cannot load it ({e})") from e
    # mlx_lm.utils.save also carries these over (custom model code, generation defaults).
    for pattern in ("*.py", "generation_config.json"):
        for f in tokenizer_dir.glob(pattern):
            shutil.copy(f, path)


def file_sizes(path: Path) -> dict[str, int]:
    """Bytes of each weight file in an output directory."""
    return {p.name: p.stat().st_size for p in sorted(path.glob("model*.safetensors"))}
