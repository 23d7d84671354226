"""The two layers: the core (what the notebook walks through) imports none of the tools, and no module
imports itself back through others, counting imports made inside functions too; importing the core
leaves the environment alone but for albumentations' own switch, and the tools keep Gradio and Hugging
Face from reporting home."""

from __future__ import annotations

import ast
import json
import os
import subprocess

from helpers import NO_NETWORK, PYTHON, ROOT

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


# Set by the project (the core or the tools) when unset, and nowhere else
SWITCHES = ("NO_ALBUMENTATIONS_UPDATE", "GRADIO_ANALYTICS_ENABLED", "HF_HUB_DISABLE_TELEMETRY")


def fresh_python(code: str) -> object:
    """What ``code`` prints as JSON, run by a new interpreter in the repository without the project's switches
    in its environment (and with no network)."""
    env = {k: v for k, v in os.environ.items() if k not in SWITCHES and k != "PYTHONPATH"}
    env.update(NO_NETWORK, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    done = subprocess.run([PYTHON, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_importing_the_core_changes_no_environment_variable():
    """Every core module imported in a fresh interpreter leaves the environment as it was (albumentations'
    switch against its PyPI check is set for its import alone), and imports no tool on the way. OpenCV's
    own change (it puts its bundled libraries on LD_LIBRARY_PATH when imported) is made before the snapshot."""
    core = sorted(module_name(p) for p in PACKAGE.glob("*.py") if p.stem != "__main__") + ["custom_resnet"]
    assert "modular" in core and "modular.learner" in core and "modular.transforms" in core
    changed = fresh_python(
        "import importlib, json, os, sys, warnings\n"
        "import cv2\n"
        "before = dict(os.environ)\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        f"    for name in {core!r}:\n"
        "        importlib.import_module(name)\n"
        "after = dict(os.environ)\n"
        "tools = sorted(m for m in sys.modules if m.startswith('modular.tools'))\n"
        "warned = [str(w.message) for w in caught]\n"
        "print(json.dumps([{k: after.get(k) for k in set(before) | set(after) if before.get(k) != after.get(k)}, tools,"
        " warned]))")
    assert changed == [{}, [], []]  # nothing changed, no tool imported, no warning (albumentations asked no PyPI)


def test_the_tools_turn_gradio_analytics_and_hugging_face_telemetry_off_before_albumentations_is_imported():
    """As ``python -m modular`` starts (the command line first, then the core): Gradio and gradio_client
    find their analytics off, and huggingface_hub, which albumentations imports and which reads its
    switch once, has telemetry off."""
    seen = fresh_python(
        "import json, os\n"
        "import modular.tools.cli, modular.learner\n"
        "import huggingface_hub.constants as hub\n"
        "print(json.dumps([os.environ.get('GRADIO_ANALYTICS_ENABLED'), hub.HF_HUB_DISABLE_TELEMETRY]))")
    assert seen == ["False", True]


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


CORE_FILES = [*sorted(p for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")),
              ROOT / "custom_resnet.py"]


def defined_names(tree: ast.Module) -> set[str]:
    """The public functions, classes and constants a module defines at its top level."""
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return {name for name in names if not name.startswith("_")}


def used_names(tree: ast.AST) -> set[str]:
    """Every name a piece of code reads, bare or as an attribute (``plots.plot_history``)."""
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            used.add(node.id)
        elif isinstance(node, ast.Attribute):
            used.add(node.attr)
        elif isinstance(node, ast.ImportFrom):
            used.update(alias.name for alias in node.names)
    return used


def test_every_public_name_of_the_core_serves_the_core_or_the_notebook():
    """What only the tools (or the tests) use lives in the tools: a student reading the core meets
    nothing that the notebook's path does not need. A name counts as used when another core module or
    the notebook reads it, or its own module does (beyond defining it)."""
    trees = {path: ast.parse(path.read_text()) for path in CORE_FILES}
    notebook = json.loads((ROOT / "era_s10_cifar.ipynb").read_text())
    notebook_code = "\n".join("".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code")
    used_by = {path: used_names(tree) for path, tree in trees.items()}
    used_by["notebook"] = used_names(ast.parse(notebook_code))
    unused = sorted(f"{path.relative_to(ROOT)}: {name}" for path, tree in trees.items() for name in defined_names(tree)
                    if not any(name in names for names in used_by.values()))
    assert not unused, unused
