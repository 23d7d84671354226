"""The two layers: the core (what the notebook walks through) imports none of the tools, and no module
imports itself back through others, counting imports made inside functions too."""

from __future__ import annotations

import ast

from helpers import ROOT

PACKAGE = ROOT / "modular"


def module_name(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path) -> set[str]:
    """Every project module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py")) + [ROOT / "custom_resnet.py"]
    names = {module_name(p): p for p in paths}
    return {name: {m for m in imports(path) if m in names and m != name} for name, path in names.items()}


def test_the_core_imports_none_of_the_tools():
    core = {name: deps for name, deps in graph().items() if not name.startswith("modular.tools")
            and name != "modular.__main__"}  # __main__ is the command line's entry point
    assert "modular.learner" in core and "custom_resnet" in core
    offenders = {name: sorted(d for d in deps if d.startswith("modular.tools")) for name, deps in core.items()}
    assert not {name: deps for name, deps in offenders.items() if deps}


def test_no_import_cycle():
    edges = graph()
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, " -> ".join(path[path.index(name):] + (name,))
        if name in done:
            return
        for dep in sorted(edges[name]):
            visit(dep, path + (name,))
        done.add(name)

    for name in sorted(edges):
        visit(name, ())
