"""The notebook's Colab setup cell: one repository address, and a cell that survives being run again
(in the same kernel, and after a runtime restart with the clone already there); the Google Drive cell: off by
default, nothing outside Colab, and in Colab the run folder on Drive before the configuration reads it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types

import helpers  # noqa: F401  (environment and sys.path)
import pytest
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


def drive_cell() -> str:
    (cell,) = [c for c in cells("code") if "USE_DRIVE = " in c]
    return cell


def test_the_drive_cell_comes_before_the_configuration_and_is_off_by_default():
    code = cells("code")
    reads = [i for i, c in enumerate(code) if 'os.environ.get("ERA_OUTPUT_DIR")' in c]
    assert len(reads) == 1 and "output_dir=os.environ.get(\"ERA_OUTPUT_DIR\")" in code[reads[0]]
    assert code.index(setup_cell()) < code.index(drive_cell()) < reads[0]
    assert drive_cell().startswith("USE_DRIVE = False")
    assert "from google.colab import drive" not in "\n".join(cells("markdown"))  # the snippet became the cell


def run_drive_cell(use_drive: bool) -> dict:
    namespace = {"os": os, "sys": sys}
    exec(drive_cell().replace("USE_DRIVE = False", f"USE_DRIVE = {use_drive}", 1), namespace)
    return namespace


@pytest.mark.parametrize("use_drive", [False, True])
def test_the_drive_cell_does_nothing_outside_colab(use_drive, monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.delenv("ERA_OUTPUT_DIR", raising=False)
    before = dict(os.environ)
    run_drive_cell(use_drive)
    assert dict(os.environ) == before and "google.colab" not in sys.modules


@pytest.mark.parametrize("use_drive", [False, True])
def test_in_colab_the_flag_mounts_drive_and_points_the_run_folder_there(use_drive, monkeypatch, tmp_path):
    from modular.tools.notebook import notebook_config

    mounted = []
    colab = types.ModuleType("google.colab")
    colab.drive = types.SimpleNamespace(mount=mounted.append)
    monkeypatch.setitem(sys.modules, "google", sys.modules.get("google") or types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.delenv("ERA_OUTPUT_DIR", raising=False)
    run_drive_cell(use_drive)
    if use_drive:
        assert mounted == ["/content/drive"]
        out = os.environ["ERA_OUTPUT_DIR"]
        assert out.startswith("/content/drive/MyDrive/")
        assert notebook_config(quick=False, workdir=tmp_path, output_dir=os.environ.get("ERA_OUTPUT_DIR")).output_dir == out
    else:
        assert mounted == [] and "ERA_OUTPUT_DIR" not in os.environ
