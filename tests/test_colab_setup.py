"""The notebook's Colab setup cell: one repository address, and a cell that survives being run again
(in the same kernel, and after a runtime restart with the clone already there)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import helpers  # noqa: F401  (environment and sys.path)
from helpers import ROOT

NOTEBOOK = ROOT / "era_s10_cifar.ipynb"
BADGE = re.compile(r"colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/blob/main/era_s10_cifar\.ipynb")


def cells(kind: str) -> list[str]:
    return ["".join(c["source"]) for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == kind]


def setup_cell() -> str:
    (cell,) = [c for c in cells("code") if "REPO_URL = " in c]
    return cell


def repo_url() -> str:
    return re.search(r'^REPO_URL = "([^"]+)"', setup_cell(), re.M).group(1)


def test_the_repository_address_is_written_once_and_both_badges_point_at_it():
    url = repo_url()
    repo = re.fullmatch(r"https://github\.com/([\w.-]+/[\w.-]+)", url).group(1)
    in_notebook = BADGE.findall("\n".join(cells("markdown")))
    in_readme = BADGE.findall((ROOT / "README.md").read_text())
    assert in_notebook and in_readme
    assert set(in_notebook) == set(in_readme) == {repo}
    code = "\n".join(cells("code"))
    assert code.count("github.com") == 1  # the setup cell's REPO_URL, nowhere else


def run_setup_cell(workdir, origin: str) -> subprocess.CompletedProcess:
    """Run the cell, as Colab would, twice in one fresh interpreter in ``workdir``, with a stand-in
    google.colab module and REPO_URL pointed at ``origin``; report where ``modular`` came from."""
    cell = re.sub(r'^REPO_URL = "[^"]+"', f"REPO_URL = {origin!r}", setup_cell(), flags=re.M)
    script = "\n".join([
        "import os, sys, types",
        "sys.modules['google.colab'] = types.ModuleType('google.colab')",
        f"cell = {cell!r}",
        "exec(cell, {})",
        "import modular",
        "print('first', os.getcwd(), modular.__file__)",
        "exec(cell, {})",
        "print('second', os.getcwd())",
    ])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ERA_QUICK")}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")  # pip must find everything installed
    return subprocess.run([sys.executable, "-c", script], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=600)


def pip_freeze() -> str:
    return subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout


def test_the_setup_cell_runs_twice_and_again_after_a_restart(tmp_path):
    origin = tmp_path / "origin"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(origin)], check=True)
    content = tmp_path / "content"  # Colab's working folder
    content.mkdir()
    before = pip_freeze()
    for attempt in ("first session", "after a restart"):
        done = run_setup_cell(content, f"file://{origin}")
        shown = f"{attempt}: exit {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}"
        assert done.returncode == 0, shown
        clone = content / "era_s10_cifar"
        assert f"first {clone} {clone / 'modular' / '__init__.py'}" in done.stdout, shown
        assert f"second {clone}" in done.stdout, shown
    assert pip_freeze() == before
