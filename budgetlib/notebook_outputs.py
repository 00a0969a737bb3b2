"""Put a `make run`'s outputs into the committed notebooks, so that their tables and figures show on
the repository's web page.

``python -m budgetlib outputs results/notebooks/smoke`` copies each executed notebook's outputs into
``notebooks/<same name>``: papermill's injected-parameters cell is left out, every code cell must be
identical to the committed one (outputs of other code are refused, naming the notebook; markdown may
have changed since, e.g. a closing cell written from the run's numbers), stderr lines that are only
progress bars are dropped, and paths inside the checkout that ran are written relative to it (a warning's
``/home/me/budgetlib/budgetlib/data.py`` becomes ``budgetlib/data.py``): no machine's paths are committed.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["copy_outputs"]

_BAR = re.compile(r"(it/s\]|s/it\]|\d+%\|)")


def _checkout(path: Path) -> Path:
    """The checkout that ran: the nearest folder above `path` holding ``budgetlib/__init__.py``."""
    for folder in path.resolve().parents:
        if (folder / "budgetlib" / "__init__.py").is_file():
            return folder
    raise FileNotFoundError(f"{path} is not inside a budgetlib checkout (run `make run` there)")


def _clean(output, checkout: str):
    """`output` without progress-bar lines (stderr) and with `checkout`'s absolute paths made relative;
    None when nothing is left of it."""
    import nbformat

    def relative(text):
        return text.replace(checkout, "") if isinstance(text, str) else [relative(t) for t in text]

    if output.get("output_type") == "stream":
        text = relative(output["text"])
        if output.get("name") == "stderr":
            lines = [line for line in re.split(r"(?<=[\n\r])", text) if not _BAR.search(line)]
            text = "".join(lines).replace("\r", "")
            if not text.strip():
                return None
        return nbformat.v4.new_output("stream", name=output["name"], text=text)
    if "data" in output:
        output["data"] = {kind: relative(v) if kind.startswith("text/") else v for kind, v in output["data"].items()}
    return output


def copy_outputs(executed_dir: str | Path, root: str | Path) -> list[Path]:
    """Copy the outputs of every ``NN_*.ipynb`` in `executed_dir` into ``<root>/notebooks``; returns the
    notebooks written. A notebook whose code cells differ from the committed one is an error naming it."""
    import nbformat

    executed_dir, written = Path(executed_dir), []
    checkout = f"{_checkout(executed_dir)}/"
    ran_paths = sorted(executed_dir.glob("[0-9][0-9]_*.ipynb"))
    if not ran_paths:
        raise FileNotFoundError(f"no executed notebooks (NN_*.ipynb) in {executed_dir}: run `make run` first")
    for ran_path in ran_paths:
        target = Path(root) / "notebooks" / ran_path.name
        ran, mine = nbformat.read(ran_path, as_version=4), nbformat.read(target, as_version=4)
        cells = [c for c in ran.cells if "injected-parameters" not in c.metadata.get("tags", [])]
        code = [(c.cell_type, c.source if c.cell_type == "code" else "") for c in cells]
        if code != [(c.cell_type, c.source if c.cell_type == "code" else "") for c in mine.cells]:
            raise ValueError(f"{ran_path}: its code cells differ from {target}: rerun `make run` with the committed "
                             "notebooks before copying their outputs")
        for cell, done in zip(mine.cells, cells):
            if cell.cell_type == "code":
                cell.outputs = [o for o in (_clean(o, checkout) for o in done.get("outputs", [])) if o is not None]
                cell.execution_count = done.get("execution_count")
        nbformat.write(mine, target)
        written.append(target)
    return written
