"""Every notebook's settings per profile, as data: ``budgetlib/recipes/profiles.yaml``.

``SETTINGS = profile(PROFILE, "04", model=MODEL)`` is each notebook's settings
cell. The file holds, per notebook ("00"…"08") and profile (smoke, medium,
full), the model, the engine, the batch size and the step's own settings; a
step that has no entry for a profile says why (``unavailable:``), and asking
for it raises that reason. Datasets are ``[name, split, n]`` and come back as
tuples, the form `data.load_available` takes.

``BUDGETLIB_MAX_N=64`` caps every evaluation dataset (``data``, ``sweep``) at 64 questions, recorded as
``max_n`` in the settings.

A **dry run** (``BUDGETLIB_DRY_RUN=1``, or ``dry_run=True``; ``make
dry-run-full``) keeps a profile's code paths (its engine, its datasets and
recipes: gradient accumulation, activation checkpointing, the resume logic)
at toy size, so the full profile's code runs once on a CPU before hours on a
rented GPU: the embedded 135M model unless `model` is given, 4 questions a
dataset, short token caps, and recipes capped at 2 optimizer steps
(``recipe_profile`` "full+dry", `training.config`). Its train questions are
`DRY_RUN_TRAIN`, 48 synthetic ones (our choice): within a short cap the 135M
answers almost no GSM8K question, and the steps after the search (the learned
predictor, SFT data, DPO pairs, the cold start) need a few correct answers.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["profile", "max_n", "PROFILES", "PROFILES_FILE", "ProfileError", "ProfileUnavailable", "dry_run_active",
           "DRY_RUN_TRAIN"]

PROFILES = ("smoke", "medium", "full")
PROFILES_FILE = Path(__file__).resolve().parent / "recipes" / "profiles.yaml"
_TUPLE_KEYS = ("train", "sweep")  # a [name, split, n] dataset
DRY_RUN_N = 4  # questions per evaluation dataset in a dry run
DRY_RUN_TRAIN = ("synthetic", "train", 48)  # a dry run's train questions (module docstring)
_DRY_RUN_CAPS = {"max_new_tokens": 128, "search_max_new_tokens": 128, "estimator_max_new_tokens": 32,
                 "cold_start_max_new_tokens": 128, "batch_size": 16, "timing_n": 2}


def dry_run_active() -> bool:
    """Whether ``BUDGETLIB_DRY_RUN`` asks for a dry run (1, true, yes, on)."""
    return os.environ.get("BUDGETLIB_DRY_RUN", "").strip().lower() in ("1", "true", "yes", "on")


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


def profile(name: str, notebook: str, *, model: str | None = None, path: str | Path | None = None,
            dry_run: bool | None = None) -> dict[str, Any]:
    """The settings of `notebook` ("00"…"08") in profile `name`, with ``model`` replaced by `model`
    when given (a hub id, a local directory or an embedded model's name); shrunk to a dry run (module
    docstring) when `dry_run` (default: `dry_run_active()`). A fresh dict each call."""
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
    if "backend_options" in settings and not isinstance(settings["backend_options"], dict):
        raise ProfileError(f"{where}: 'backend_options' must map the engine's options to values, "
                           f"got {settings['backend_options']!r}")
    if "wordings" in settings:
        settings["wordings"] = [tuple(w) if isinstance(w, list) else w for w in settings["wordings"]]
    if model:
        settings["model"] = model
    if dry_run if dry_run is not None else dry_run_active():
        settings = _dry_run(settings, model)
    cap = max_n()
    if cap is not None:  # evaluation questions only; training questions keep their number
        settings["max_n"] = cap
        if "data" in settings:
            settings["data"] = {k: (d, split, cap if n is None else min(n, cap))
                                for k, (d, split, n) in settings["data"].items()}
        if "sweep" in settings:
            d, split, n = settings["sweep"]
            settings["sweep"] = (d, split, cap if n is None else min(n, cap))
    return settings


def max_n() -> int | None:
    """``BUDGETLIB_MAX_N``: at most this many questions per evaluation dataset (e.g. notebook 01 on 64 GSM8K
    questions in the full profile, benchmarks/gpu_check.sh); unset: the profile's numbers."""
    value = os.environ.get("BUDGETLIB_MAX_N", "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ProfileError(f"BUDGETLIB_MAX_N must be a positive integer, got {value!r}")
    return int(value)


def _dry_run(settings: dict[str, Any], model: str | None) -> dict[str, Any]:
    """`settings` at toy size, every code path kept (module docstring)."""
    out = dict(settings, dry_run=True)
    if "model" in out:
        out["model"] = model  # None: the embedded 135M
    for key, cap in _DRY_RUN_CAPS.items():
        if key in out:
            out[key] = min(out[key], cap)
    if "data" in out:
        out["data"] = {k: (n, split, DRY_RUN_N) for k, (n, split, _) in out["data"].items()}
    if "sweep" in out:
        out["sweep"] = (*out["sweep"][:2], DRY_RUN_N)
    if "train" in out:
        out["train"] = DRY_RUN_TRAIN
    for key in ("budgets", "presets"):
        if key in out:
            out[key] = list(out[key])[:3]
    if "cold_start_samples" in out:
        out["cold_start_samples"] = min(out["cold_start_samples"], 2)
    if "recipe_profile" in out:
        out["recipe_profile"] = f"{out['recipe_profile']}+dry"
    return out
