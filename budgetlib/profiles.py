"""Every notebook's settings per profile, as data: ``budgetlib/recipes/profiles.yaml``.

``SETTINGS = profile(PROFILE, "04", model=MODEL)`` is each notebook's settings
cell. The file holds, per notebook ("00"…"08") and profile (smoke, medium,
full), the model, the engine, the batch size and the step's own settings; a
step that has no entry for a profile says why (``unavailable:``), and asking
for it raises that reason. Datasets are ``[name, split, n]`` and come back as
tuples, the form `data.load_available` takes.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["profile", "PROFILES", "PROFILES_FILE", "ProfileError", "ProfileUnavailable"]

PROFILES = ("smoke", "medium", "full")
PROFILES_FILE = Path(__file__).resolve().parent / "recipes" / "profiles.yaml"
_TUPLE_KEYS = ("train", "sweep")  # a [name, split, n] dataset


class ProfileError(ValueError):
    """A profile or notebook the profiles file does not have, or a malformed entry (names file and key)."""


class ProfileUnavailable(ProfileError):
    """A step that has no entry for this profile, with the reason the profiles file gives."""


@lru_cache(maxsize=4)
def _read(path: str, mtime_ns: int) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: expected a mapping of notebooks to profiles")
    return {k: v for k, v in data.items() if not str(k).startswith("_")}


def _dataset(value: Any, where: str) -> tuple:
    if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, str) for v in value[:2])
            and (value[2] is None or isinstance(value[2], int))):
        raise ProfileError(f"{where}: expected [name, split, n] (n an integer or null), got {value!r}")
    return tuple(value)


def profile(name: str, notebook: str, *, model: str | None = None, path: str | Path | None = None) -> dict[str, Any]:
    """The settings of `notebook` ("00"…"08") in profile `name`, with ``model`` replaced by `model`
    when given (a hub id, a local directory or an embedded model's name). A fresh dict each call."""
    path = Path(path) if path is not None else PROFILES_FILE
    data = _read(str(path), path.stat().st_mtime_ns)
    notebook = str(notebook)
    if notebook not in data:
        raise ProfileError(f"{path}: no notebook {notebook!r}; it has {sorted(data)}")
    entries = data[notebook]
    if not isinstance(entries, dict) or name not in entries:
        known = sorted(entries) if isinstance(entries, dict) else []
        raise ProfileError(f"{path}: notebook {notebook} has no profile {name!r}; it has {known}")
    entry = entries[name]
    where = f"{path} [{notebook}][{name}]"
    if not isinstance(entry, dict):
        raise ProfileError(f"{where}: expected a mapping of settings, got {entry!r}")
    if "unavailable" in entry:
        raise ProfileUnavailable(f"notebook {notebook} has no {name} profile: {entry['unavailable']}")
    settings = dict(entry)
    if "data" in settings:
        if not isinstance(settings["data"], dict):
            raise ProfileError(f"{where}: 'data' must map names to [name, split, n]")
        settings["data"] = {k: _dataset(v, f"{where}[data][{k}]") for k, v in settings["data"].items()}
    for key in _TUPLE_KEYS:
        if key in settings:
            settings[key] = _dataset(settings[key], f"{where}[{key}]")
    if "wordings" in settings:
        settings["wordings"] = [tuple(w) if isinstance(w, list) else w for w in settings["wordings"]]
    if model:
        settings["model"] = model
    return settings
