"""Where things live: the project root, the user cache, the local data dir."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["project_root", "cache_dir", "data_dirs"]


def project_root() -> Path:
    """The repository root for a source checkout (editable install), else the
    current directory (e.g. a pip install on Colab)."""
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").exists() and (here / "budgetlib").is_dir():
        return here
    return Path.cwd()


def cache_dir() -> Path:
    """`BUDGETLIB_CACHE`, else `<user cache dir>/budgetlib` (XDG on Linux)."""
    env = os.environ.get("BUDGETLIB_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "budgetlib"


def data_dirs() -> list[Path]:
    """Local data directories to try, in order: `BUDGETLIB_DATA_DIR`, then
    `../shared/data` next to the repository root when it exists."""
    dirs = []
    env = os.environ.get("BUDGETLIB_DATA_DIR")
    if env:
        dirs.append(Path(env).expanduser())
    shared = project_root().parent / "shared" / "data"
    if shared.is_dir():
        dirs.append(shared)
    return dirs
