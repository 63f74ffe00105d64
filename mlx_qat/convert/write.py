"""Writing an mlx-lm model directory, atomically.

mlx-lm writes the files (`mlx_lm.utils.save_model` / `save_config`): `model.safetensors`, or
`model-0000i-of-0000n.safetensors` shards of at most 5 GB (mlx-lm's `MAX_FILE_SIZE_GB`), always
with `model.safetensors.index.json`; `config.json` sorted, with `"quantization"` mirrored into
`"quantization_config"`. Beside them: tokenizer files and `README.md`.

`staged_dir` builds everything under `<mlx_path>.tmp-<pid>` and renames it into place only when
the block finishes without error; the output it replaces is removed only after that rename.
`config.json` is written as `config.unverified.json` (`save_config(..., pending=True)`) and
renamed to `config.json` (`commit_config`) only once the parity check has passed, so no
directory that `mlx_lm.load` accepts exists before the export is verified, not even the
temporary one of a killed process. Rules for the output path and stale temporaries:
`mlx_qat.convert.output`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import mlx.nn as nn

from ..fileio import fsync_path
from .errors import ConvertError
from .output import (
    PENDING_CONFIG,
    WRITE_ERRNOS,
    check_output,
    clean_stale,
    replace_refusal,
    write_error,
)

logger = logging.getLogger(__name__)

INDEX = "model.safetensors.index.json"
CONFIG = "config.json"
RESULT_FILE = "mlx_qat.json"


def tmp_dir_for(final: Path) -> Path:
    """`<final>.tmp-<pid>`, beside `final` so the rename stays on one file system."""
    return final.with_name(f"{final.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def staged_dir(final: Path, force: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces `final`, on error it is removed.

    Stale temporaries of dead convert processes beside `final` are removed before and after
    (`mlx_qat.convert.output.clean_stale`). An OSError
    from writing (permission, read-only or full disk) becomes a one-line `ConvertError`.
    """
    final = Path(final).expanduser()
    check_output(final, force)
    clean_stale(final)
    tmp = tmp_dir_for(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    except OSError as e:
        raise (write_error(final, e) if e.errno in WRITE_ERRNOS else e) from e
    try:
        yield tmp
        _fsync_tree(tmp)
        _publish(tmp, final, force)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and _writing(e, tmp):
            raise write_error(final, e) from e
        raise
    clean_stale(final)  # an `.old-<pid>` of an interrupted replace is superseded now


def _writing(e: OSError, tmp: Path) -> bool:
    # A write error in the output's directory, not a read error of some input.
    where = os.path.abspath(e.filename) if e.filename else ""
    return e.errno in WRITE_ERRNOS and where.startswith(os.path.abspath(tmp.parent))


def _publish(tmp: Path, final: Path, force: bool) -> None:
    old = None
    if final.exists() or final.is_symlink():
        # Checked again: the directory may have changed since the export started.
        why = "--force was not given" if not force else replace_refusal(final)
        if why is not None:
            raise ConvertError(
                f"--mlx-path {final} appeared or changed while converting and {why}; "
                "nothing was replaced. Choose another --mlx-path"
            )
        # Move the old output aside first: os.replace cannot replace a non-empty directory.
        old = final.with_name(f"{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_path(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for p in root.iterdir():
        if p.is_file():
            fsync_path(p)
    fsync_path(root)


def save_weights(path: Path, model: nn.Module, donate: bool = False) -> dict:
    """Save `model.parameters()` with mlx-lm's `save_model` (shards + index); return the index.

    `donate`: mlx-lm frees the model's arrays as it writes them (the model is unusable after).
    """
    from mlx_lm.utils import save_model

    save_model(path, model, donate_model=donate)
    return json.loads((path / INDEX).read_text(encoding="utf-8"))


def save_config(path: Path, config: dict, pending: bool = False) -> None:
    """mlx-lm's `save_config`: sorted keys, "quantization" mirrored to "quantization_config".

    `pending`: write it as `config.unverified.json`, which `mlx_lm.load` does not read, for
    `commit_config` to rename once the export is verified.
    """
    from mlx_lm.utils import save_config as _save_config

    _save_config(dict(config), config_path=path / (PENDING_CONFIG if pending else CONFIG))


def commit_config(path: Path) -> None:
    """Rename the verified `config.unverified.json` to `config.json`: now mlx-lm loads it."""
    os.replace(path / PENDING_CONFIG, path / CONFIG)


def write_result(path: Path, card: str, result: dict) -> None:
    """The model card (README.md) and what the export measured (`RESULT_FILE`)."""
    (path / "README.md").write_text(card, encoding="utf-8")
    (path / RESULT_FILE).write_text(json.dumps(result, indent=2), encoding="utf-8")


def file_sizes(path: Path) -> dict[str, int]:
    """Bytes of each weight file in an output directory."""
    return {p.name: p.stat().st_size for p in sorted(path.glob("model*.safetensors"))}
