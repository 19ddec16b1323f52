"""Imports point one way along the pipeline: signals → detect → diagnose → rescue → record →
core → front-ends. A lower layer that imports a higher one hides a runtime loop and lets a
change in a front-end break the pipeline; this test names the file and the import."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "unstuck"

# Lower first; a package may import its own layer and any below it.
LAYERS: list[set[str]] = [
    {"types", "plugins"},
    {"signals", "detect"},
    {"diagnose"},
    {"rescue"},
    {"record"},
    {"analyze"},  # reads logs into record's RunData and runs detection and diagnosis on them
    {"core"},
    {"fleet"},
    {"integrations"},
    {"cli", "__init__", "__main__", "_site"},
]
LEVEL = {name: i for i, layer in enumerate(LAYERS) for name in layer}

# (file, imported package): why the upward import is there.
ALLOWED = {
    ("record/store.py", "analyze"): (
        "the query deadline lives with every reader's limits in analyze._limits (tests lower "
        "it there); imported inside the function, so writing a run never loads the analysis"
    ),
}


def _package(rel: Path) -> str:
    return rel.parts[0][:-3] if len(rel.parts) == 1 else rel.parts[0]


def _imported_packages(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "unstuck":
                found.add(parts[1] if len(parts) > 1 else "__init__")
    return found


def upward_imports() -> list[str]:
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        own = _package(rel)
        for target in _imported_packages(ast.parse(path.read_text())):
            if target == own or (rel.as_posix(), target) in ALLOWED:
                continue
            if LEVEL[target] > LEVEL[own]:
                bad.append(f"{rel.as_posix()} ({own}) imports unstuck.{target}")
    return bad


def test_every_package_has_a_layer():
    packages = {_package(p.relative_to(SRC)) for p in SRC.rglob("*.py")}
    assert packages <= set(LEVEL), f"put these in LAYERS: {sorted(packages - set(LEVEL))}"


def test_imports_point_down_the_pipeline():
    assert not upward_imports(), "\n".join(upward_imports())


def test_the_check_finds_an_upward_import(tmp_path):
    tree = ast.parse("from unstuck.integrations.loop import Guard\nimport unstuck.core.monitor\n")
    assert _imported_packages(tree) == {"integrations", "core"}
    assert LEVEL["integrations"] > LEVEL["rescue"]  # so rescue importing it would be reported


def test_the_allow_list_has_no_stale_entries():
    for file, target in ALLOWED:
        tree = ast.parse((SRC / file).read_text())
        assert target in _imported_packages(tree), f"{file} no longer imports {target}"
