"""The commit recorded with every run."""

from __future__ import annotations

import subprocess

import helpers  # noqa: F401  (environment and sys.path)

from modular.tools import provenance


def test_code_version_names_this_checkouts_head():
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=provenance.REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=provenance.REPO, capture_output=True, text=True).stdout
    version = provenance.code_version(from_epoch=3)
    assert version == {"commit": head, "clean": dirty.strip() == "", "from_epoch": 3}
    assert len(version["commit"]) == 40


def test_a_changed_file_makes_the_tree_unclean(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "a"], check=True)
    monkeypatch.setattr(provenance, "REPO", repo)
    assert provenance.code_version()["clean"] is True
    (repo / "a.py").write_text("x = 2\n")
    assert provenance.code_version()["clean"] is False


def test_outside_a_checkout_both_are_none(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "REPO", tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert provenance.code_version() == {"commit": None, "clean": None, "from_epoch": 0}


def test_without_git_installed_both_are_none_and_nothing_fails(tmp_path, monkeypatch):
    """A machine without git (a bare container) still trains: its record says the commit is unknown."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on it
    assert provenance.code_version(from_epoch=2) == {"commit": None, "clean": None, "from_epoch": 2}
