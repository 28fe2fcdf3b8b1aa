"""The layers of docs/contributing.md, read from the source (ast): every import between
scalinglab's modules is an edge the table allows, the third-party imports of each layer are
its own, and no module imports itself back through others (imports inside functions count)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("models", "experiments", "cluster", "analysis")
# What each layer may import of the others (docs/contributing.md, "Layers").
ALLOWED = {"models": set(), "experiments": {"models"}, "cluster": {"experiments", "models"}, "analysis": set()}
# The results contract and its I/O: every layer may import these, and they import nothing of ours.
SHARED = {"analysis.records", "analysis.adaptive_spec", "analysis.store", "analysis.errors"}
CLI = "cluster.cli"  # the command line sits on top: it may import everything; nothing imports it
# Third-party packages a layer must never import.
FORBIDDEN = {"analysis": {"torch", "ray", "deepspeed", "datasets"}, "models": {"ray", "deepspeed", "datasets", "pandas"},
             "experiments": {"ray"}}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (imports inside functions count too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: use absolute imports (the layer check reads them)"
            out.add(node.module)
            out |= {f"{node.module}.{alias.name}" for alias in node.names}
    return out


GRAPH = {name: imports(path) for name, path in modules().items()}


def ours(target: str) -> str | None:
    """The module of ours that ``target`` names (the longest known prefix), or None."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in GRAPH:
            return candidate
    return None


def edges() -> set[tuple[str, str]]:
    return {(src, dst) for src, targets in GRAPH.items() for t in targets
            if (dst := ours(t)) is not None and dst != src}


def test_every_edge_is_allowed_by_the_layer_table():
    bad = []
    for src, dst in sorted(edges()):
        layer, target = src.split(".")[0], dst.split(".")[0]
        if src == CLI or layer == target:
            if src in SHARED and dst not in SHARED:
                bad.append(f"{src} -> {dst} (the shared contract imports nothing of ours)")
            continue
        if dst == CLI:
            bad.append(f"{src} -> {dst} (nothing imports the CLI)")
        elif dst not in SHARED and target not in ALLOWED[layer]:
            bad.append(f"{src} -> {dst} ({layer} may import {sorted(ALLOWED[layer]) or 'no other layer'} "
                       "and the shared contract)")
    assert not bad, "\n".join(bad)


def test_no_layer_imports_what_it_must_not():
    bad = [f"{name} imports {t}" for name, targets in GRAPH.items() for t in targets
           if t.split(".")[0] in FORBIDDEN.get(name.split(".")[0], set())]
    assert not bad, "\n".join(bad)


def test_there_is_no_import_cycle():
    graph: dict[str, set[str]] = {name: set() for name in GRAPH}
    for src, dst in edges():
        graph[src].add(dst)
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in path:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in done:
                visit(nxt, path + [nxt])
        done.add(node)

    for node in sorted(graph):
        if node not in done:
            visit(node, [node])


def test_the_checker_sees_a_forbidden_edge():
    """The test above can fail: an analysis module importing torch is caught."""
    assert "torch" not in {t.split(".")[0] for t in GRAPH["analysis.fit"]}
    assert ("cluster.sweep", "experiments.planner") in edges()
    assert ours("analysis.records.TRIALS") == "analysis.records"
