"""The package's file-level import graph has no cycle, function-level imports included.

The import-linter layers contract (pyproject.toml) only orders the layers; two modules inside one
layer may still import each other, and an import moved into a function still closes a loop. This
test builds the whole graph with grimp (module granularity: one node per file; imports inside
functions and under ``TYPE_CHECKING`` count) and fails naming each cycle, with the line of every
import on it.
"""

from __future__ import annotations

import grimp
import pytest


def import_cycles(graph) -> list[list[str]]:
    """One shortest cycle ``[a, b, ..., a]`` per strongly connected group of modules in `graph`
    (a grimp ImportGraph), starting at the group's first module in sorted order; sorted."""
    upstream = {m: graph.find_upstream_modules(m) for m in graph.modules}
    seen: set[str] = set()
    cycles = []
    for a in sorted(graph.modules):
        if a in seen:
            continue
        group = {a} | {b for b in upstream[a] if a in upstream[b]}
        seen |= group
        if len(group) == 1:
            continue
        chains = [
            graph.find_shortest_chain(importer=b, imported=a)
            for b in graph.find_modules_directly_imported_by(a)
            if b in group
        ]
        cycles.append([a, *min((c for c in chains if c), key=lambda c: (len(c), c))])
    return cycles


def describe(graph, cycle: list[str]) -> str:
    """``a -> b -> a`` with the importing line of each step."""
    steps = []
    for importer, imported in zip(cycle, cycle[1:]):
        details = graph.get_import_details(importer=importer, imported=imported)
        where = "; ".join(f"line {d['line_number']}: {d['line_contents']}" for d in details)
        steps.append(f"  {importer} -> {imported}  ({where})")
    return " -> ".join(cycle) + "\n" + "\n".join(steps)


def test_mlx_qat_has_no_import_cycle():
    graph = grimp.build_graph("mlx_qat", cache_dir=None)
    cycles = import_cycles(graph)
    if cycles:
        pytest.fail(
            f"{len(cycles)} import cycle(s) in mlx_qat (function-level imports count): move the "
            "shared piece down into a module both import, or merge the two halves\n"
            + "\n".join(describe(graph, c) for c in cycles)
        )


def test_a_cycle_behind_a_function_level_import_is_found_and_named():
    graph = grimp.ImportGraph()
    for m in ("p", "p.low", "p.mid", "p.top", "p.x", "p.y"):
        graph.add_module(m)
    # p.low -> p.top closes the first loop (as an import inside a function would)
    edges = [("p.top", "p.mid"), ("p.mid", "p.low"), ("p.low", "p.top"), ("p.x", "p.y")]
    edges += [("p.y", "p.x"), ("p.top", "p.x")]
    for line, (a, b) in enumerate(edges, 1):
        graph.add_import(importer=a, imported=b, line_number=line, line_contents=f"import {b}")

    cycles = import_cycles(graph)
    assert cycles == [["p.low", "p.top", "p.mid", "p.low"], ["p.x", "p.y", "p.x"]]
    assert describe(graph, cycles[1]).splitlines() == [
        "p.x -> p.y -> p.x",
        "  p.x -> p.y  (line 4: import p.y)",
        "  p.y -> p.x  (line 5: import p.x)",
    ]
    graph.remove_import(importer="p.low", imported="p.top")
    assert import_cycles(graph) == [["p.x", "p.y", "p.x"]]
