"""Which learning rate wins on validation, and whether it sits inside what was tried.

A benchmark's rule: a setting that wins at the edge of the values tried is not chosen; the
bracket is extended first. `bracket_lines` reads bench_pretrained's json rows of one width and,
per method family and fixed other settings, names the best row on validation and says, for
each learning rate it varies (`lr`, and `scale_lr` for QAT's grid), whether that value is
inside the bracket, at its top or bottom edge, or the only value tried.
"""

from __future__ import annotations

# Settings that are bracketed, and settings that do not define a different method:
# `split` only gives weights and grid separate optimizer groups, which `~0:S` needs.
LRS = ("lr", "scale_lr")
IGNORED = ("split",)


def _key(row: dict) -> tuple:
    s = row["settings"]
    rest = tuple(sorted((k, str(v)) for k, v in s.items() if k not in LRS + IGNORED))
    return row["method"], row["tokens"], row["seed"], rest


def position(value: float, tried: list[float]) -> str:
    """'inside', 'top edge', 'bottom edge' or 'only value' of `value` among `tried`.

    >>> position(1e-4, [3e-5, 1e-4, 3e-4]), position(3e-4, [1e-4, 3e-4])
    ('inside', 'top edge')
    """
    tried = sorted(set(tried))
    if len(tried) < 2:
        return "only value"
    if value == tried[-1]:
        return "top edge"
    return "bottom edge" if value == tried[0] else "inside"


def best_per_group(rows: list[dict]) -> list[dict]:
    """Per (method, tokens, seed, other settings): the best row on validation and its bracket.

    Returns dicts with `best` (the row), `tried` (every row of the group) and, per varied
    learning rate, `where[lr_name]` = (value, values tried with the others fixed, position).
    """
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("tokens") and r.get("val_recovered") is not None:
            groups.setdefault(_key(r), []).append(r)
    out = []
    for members in groups.values():
        best = max(members, key=lambda r: r["val_recovered"])
        where = {}
        for lr in (k for k in LRS if k in best["settings"]):
            others = [k for k in LRS if k != lr and k in best["settings"]]
            line = [
                m["settings"][lr]
                for m in members
                if all(m["settings"].get(k) == best["settings"][k] for k in others)
            ]
            value = best["settings"][lr]
            where[lr] = (value, sorted(set(line)), position(value, line))
        out.append({"best": best, "tried": members, "where": where})
    return out


def bracket_lines(rows: list[dict]) -> list[str]:
    """A markdown table: per group, the validation winner and where its LRs sit."""
    lines = [
        "| method | tokens | seed | rows tried | best on validation | val / test / left-out "
        "recovered | learning rates: value (tried) position |",
        "|---|---|---|---|---|---|---|",
    ]
    for g in sorted(best_per_group(rows), key=lambda g: (g["best"]["method"], g["best"]["seed"])):
        b = g["best"]
        pct = [
            "-" if b.get(k) is None else f"{100 * b[k]:.1f}%"
            for k in ("val_recovered", "test_recovered", "left_out_recovered")
        ]
        lrs = "; ".join(
            f"{lr} {v:g} ({', '.join(f'{x:g}' for x in tried)}) {pos}"
            for lr, (v, tried, pos) in g["where"].items()
        )
        lines.append(
            f"| {b['method']} | {b['tokens']:,} | {b['seed']} | {len(g['tried'])} | "
            f"`{b['name']}` | {' / '.join(pct)} | {lrs} |"
        )
    return lines
