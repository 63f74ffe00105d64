"""Sweep results as the fit reads them: merged from several files, split by pipeline, paired.

A row is keyed by its `config_hash` and its data's identity (`data`; a row without a hash by
its whole content). Rows under one key that differ only in timing (`TIMING`: one run trained
twice, e.g. by a sweep and by a shard) count once; different results under one key are
refused. A pure-FP row with the N, D, seed and loss of an earlier one (older sweeps trained
the FP anchor once per bit width, under another hash) counts once (`fp_repeats`). Rows of two
data sets are refused unless mixing is asked for (`--mix-data`); rows without `data` (written
before rows carried it) count as one unknown data set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..fileio import read_jsonl
from .law import FP_BITS

RESULTS = "results.jsonl"
PIPELINES = ("fused", "classic")
TIMING = ("wall_s", "tokens_per_s")  # what two trainings of one run may differ in
# What identifies a pure-FP run's result (its bits do not: FP trains no grid).
FP_RUN = ("N", "D", "D_fp", "D_qat", "seed", "final_loss", "eval_tokens", "data")


def find_results(paths) -> list[Path]:
    """The results files `paths` name (a folder: every results.jsonl in and below it), in
    order, each once."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            found = [p]
        elif p.is_dir():
            found = sorted(p.rglob(RESULTS))  # <out>/results.jsonl first, then the shards
            if not found:
                raise ValueError(f"{p}: no {RESULTS} in this folder or below it")
        else:
            raise ValueError(f"{p}: no such file or folder")
        out += [f for f in found if f.resolve() not in {o.resolve() for o in out}]
    if not out:
        raise ValueError(f"give one or more {RESULTS} files or folders holding them")
    return out


@dataclass
class Merged:
    """The distinct rows in the order first seen, with "file:line" of each (`origins`), rows
    read per file, and counts of identical duplicates, FP repeats and torn last lines skipped."""

    rows: list = field(default_factory=list)
    origins: list = field(default_factory=list)
    files: dict = field(default_factory=dict)
    duplicates: int = 0
    fp_repeats: int = 0
    torn: int = 0


def read_results(paths) -> Merged:
    """Read and merge the results files `paths` name (module docstring); ValueError on a
    collision (one config_hash, two different rows), naming both places."""
    m = Merged()
    seen: dict[str, tuple[dict, str]] = {}  # key -> the first row under it, and where
    fp_seen: set[str] = set()
    for path in find_results(paths):
        got = read_jsonl(path)
        m.files[str(path)], m.torn = 0, m.torn + bool(got.torn)
        for line, row in got.rows:
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{line}: a row must be a JSON object")
            m.files[str(path)] += 1
            canon = _result(row)
            key = canon
            if "config_hash" in row:  # the hash names the data by path: add its identity
                key = f"hash:{row['config_hash']}@{json.dumps(row.get('data'), sort_keys=True)}"
            where = f"{path}:{line}"
            if key in seen:
                first, origin = seen[key]
                if _result(first) == canon:
                    m.duplicates += 1
                    continue
                differ = sorted(
                    k
                    for k in set(row) | set(first)
                    if row.get(k, "<absent>") != first.get(k, "<absent>")
                )
                raise ValueError(
                    f"config_hash {row['config_hash']}: {origin} and {where} hold "
                    f"different results for the same run (they differ in {', '.join(differ)}); "
                    "keep one of them"
                )
            seen[key] = (row, where)
            if is_fp_row(row):
                fp_key = json.dumps([row.get(k) for k in FP_RUN], sort_keys=True)
                if fp_key in fp_seen:
                    m.fp_repeats += 1
                    continue
                fp_seen.add(fp_key)
            m.rows.append(row)
            m.origins.append(where)
    return m


def data_sets(m: Merged) -> dict[str, dict]:
    """{identity as JSON: {"identity": the rows' `data` (None: unknown), "files": {file: rows}}}."""
    out: dict[str, dict] = {}
    for row, origin in zip(m.rows, m.origins):
        ident = row.get("data")
        d = out.setdefault(json.dumps(ident, sort_keys=True), {"identity": ident, "files": {}})
        f = origin.rsplit(":", 1)[0]
        d["files"][f] = d["files"].get(f, 0) + 1
    return out


def _describe_data(ident) -> str:
    if not ident:
        return "unknown data (rows written before rows recorded their data)"
    key, tok = ident.get("shards_key"), ident.get("tokenizer_sha256")
    return f"shards key {str(key)[:16]}, tokenizer sha256 {str(tok)[:16]}"


def check_one_data(m: Merged, mix: bool = False) -> int:
    """The number of data sets the rows come from; ValueError naming each data set and its
    files when there are several, unless `mix`."""
    sets = data_sets(m)
    if len(sets) > 1 and not mix:
        parts = [
            f"{_describe_data(d['identity'])} in "
            + ", ".join(f"{f} ({n} rows)" for f, n in d["files"].items())
            for d in sets.values()
        ]
        raise ValueError(
            f"the rows come from {len(sets)} data sets, which one law would mix: "
            f"{'; '.join(parts)}. Fit one data set's results at a time, or pass --mix-data "
            "to fit them together"
        )
    return len(sets)


def _result(row: dict) -> str:
    """The row without its timing, canonical: what two copies of one run must agree on."""
    return json.dumps({k: v for k, v in row.items() if k not in TIMING}, sort_keys=True)


def is_fp_row(row: dict) -> bool:
    """A pure-FP run: bits null (or >= 16)."""
    return row.get("bits") is None or float(row["bits"]) >= FP_BITS


def select_pipeline(rows: list[dict], pipeline: str = "fused") -> tuple[list[dict], dict]:
    """The rows a law fit of `pipeline` takes: FP rows (their `pipeline` key dropped: the
    anchor serves every pipeline) and QAT rows of `pipeline` (no key: fused); rows without a
    final loss are left out. Returns (rows, {"fp", "qat", "other_pipeline": {name: n}, "no_loss"})."""
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline {pipeline!r}: use one of {', '.join(PIPELINES)}")
    out, other, no_loss, n_fp = [], {}, 0, 0
    for r in rows:
        if r.get("final_loss") is None:
            no_loss += 1
        elif is_fp_row(r):
            out.append({k: v for k, v in r.items() if k != "pipeline"})
            n_fp += 1
        elif r.get("pipeline", "fused") == pipeline:
            out.append(r)
        else:
            name = str(r.get("pipeline"))
            other[name] = other.get(name, 0) + 1
    counts = {"fp": n_fp, "qat": len(out) - n_fp, "other_pipeline": other, "no_loss": no_loss}
    return out, counts


def row_fraction(r: dict) -> float:
    """The row's QAT fraction: `f`, or D_qat / D when the row has no `f`."""
    return float(r["f"]) if r.get("f") is not None else float(r["D_qat"]) / float(r["D"])


def _setting(r: dict) -> tuple:
    f = round(row_fraction(r), 4)
    return (float(r["N"]), float(r["D"]), int(r["bits"]), f, r.get("seed"))


def pipeline_pairs(rows: list[dict]) -> list[dict]:
    """Fused and classic QAT runs at one (N, D, bits, f, seed): one dict per classic run with
    its fused twin's loss (None when the sweep has no fused run there), sorted by setting."""
    qat = [r for r in rows if not is_fp_row(r) and r.get("final_loss") is not None]
    fused = {_setting(r): r for r in qat if r.get("pipeline", "fused") == "fused"}
    out = []
    for r in qat:
        if r.get("pipeline") != "classic":
            continue
        N, D, bits, _, seed = key = _setting(r)
        twin = fused.get(key)
        loss = None if twin is None else float(twin["final_loss"])
        out.append(dict(N=N, D=D, bits=bits, f=row_fraction(r), seed=seed,
                        classic=float(r["final_loss"]), fused=loss))  # fmt: skip
    return sorted(out, key=lambda p: (p["bits"], p["N"], p["D"], p["f"], str(p["seed"])))
