"""Profiles as data: every notebook's settings come from budgetlib/recipes/profiles.yaml."""

import re
from pathlib import Path

import nbformat
import pytest

from budgetlib.paths import project_root
from budgetlib.profiles import PROFILES, ProfileError, ProfileUnavailable, profile

NOTEBOOKS = sorted((project_root() / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _code(path: Path) -> str:
    return "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_every_notebook_reads_its_settings_from_the_profiles_file(path):
    code = _code(path)
    assert f'profile(PROFILE, "{path.name[:2]}"' in code
    assert "SETTINGS = {" not in code  # no settings typed in a notebook
    assert not re.search(r"\b(HFBackend|LlamaServerBackend|OpenAIBackend)\(", code)  # open_backend picks the engine


def test_every_notebook_has_every_profile_or_says_why_not():
    for path in NOTEBOOKS:
        for name in PROFILES:
            try:
                settings = profile(name, path.name[:2])
            except ProfileUnavailable as exc:
                assert name == "medium" and len(str(exc)) > 80, exc  # a reason, not a bare refusal
                continue
            if path.name[:2] != "08":
                assert settings["engine"] in ("hf", "llama-server", "auto") and settings["batch_size"] >= 1


def test_the_smoke_profile_keeps_the_values_the_notebooks_had():
    """Moving the settings into data changed no result: the smoke values CI runs are the old ones."""
    s01 = profile("smoke", "01")
    assert s01 == {"model": None, "engine": "hf", "batch_size": 32, "max_new_tokens": 192, "budgets": [10, 50],
                   "data": {"synthetic": ("synthetic", "test", 24), "gsm8k-zero": ("gsm8k-zero", "test", 8),
                            "gsm8k": ("gsm8k", "test", 8)}}
    assert profile("smoke", "03")["sweep"] == ("synthetic", "test", 24)  # 16 before: now notebook 01's questions
    assert profile("smoke", "07")["train"] == ("synthetic", "train", 96)
    assert profile("medium", "03")["wordings"] == ["tokens"]
    assert profile("medium", "03")["sweep"] == ("gsm8k", "test", 64)  # notebook 01's 64 questions
    assert profile("medium", "01")["data"]["svamp"] == ("svamp", "test", 64)  # n >= 64 for a paper effect
    assert profile("medium", "01")["backend_options"] == {"rendering": "tale_raw", "stop_at_answer": True}
    assert profile("full", "02")["data"]["gsm8k/train"] == ("gsm8k", "train", 4000)


def test_model_overrides_and_each_call_is_a_fresh_dict():
    a = profile("smoke", "04", model="Qwen/Qwen2.5-0.5B-Instruct")
    assert a["model"] == "Qwen/Qwen2.5-0.5B-Instruct"
    a["data"].clear()
    assert profile("smoke", "04")["model"] is None and profile("smoke", "04")["data"]


def test_unknown_names_and_unavailable_steps_are_clear_errors():
    with pytest.raises(ProfileError, match=r"profiles.yaml: notebook 01 has no profile 'huge'"):
        profile("huge", "01")
    with pytest.raises(ProfileError, match=r"no notebook '42'"):
        profile("smoke", "42")
    with pytest.raises(ProfileUnavailable, match=r"notebook 07 has no medium profile: GRPO samples"):
        profile("medium", "07")


def test_a_malformed_entry_names_file_notebook_profile_and_key(tmp_path):
    bad = tmp_path / "profiles.yaml"
    bad.write_text('"01":\n  smoke: {model: null, engine: hf, batch_size: 4, data: {gsm8k: [gsm8k, test]}}\n')
    with pytest.raises(ProfileError, match=r"profiles.yaml \[01\]\[smoke\]\[data\]\[gsm8k\]: expected \[name, split, n\]"):
        profile("smoke", "01", path=bad)
    bad.write_text('"01":\n  smoke: {model: null, engine: hf, batch_size: 4, backend_options: [tale_raw]}\n')
    with pytest.raises(ProfileError, match=r"profiles.yaml \[01\]\[smoke\]: 'backend_options' must map"):
        profile("smoke", "01", path=bad)
    bad.write_text('"01": {smoke: [1, 2\n')
    with pytest.raises(ProfileError, match="not valid YAML"):
        profile("smoke", "01", path=bad)


def test_a_dry_run_keeps_the_full_profile_s_paths_at_toy_size(monkeypatch):
    from budgetlib.profiles import DRY_RUN_TRAIN
    from budgetlib.training.config import load_recipe

    full = profile("full", "05")
    dry = profile("full", "05", dry_run=True)
    assert dry["dry_run"] and dry["model"] is None and dry["engine"] == full["engine"] == "auto"
    assert dry["data"] == {k: (n, split, 4) for k, (n, split, _) in full["data"].items()}  # the same datasets
    assert dry["train"] == DRY_RUN_TRAIN == ("synthetic", "train", 48) and dry["max_new_tokens"] == 128
    assert dry["recipe_profile"] == "full+dry"
    recipe, real = load_recipe("tale_pt_dpo", dry["recipe_profile"]), load_recipe("tale_pt_dpo", "full")
    # the full recipe's accumulation, checkpointing and LoRA, 2 optimizer steps with a checkpoint after each
    assert (recipe.max_steps, recipe.save_steps) == (2, 1) and recipe.identity() != real.identity()
    assert (recipe.gradient_accumulation_steps, recipe.gradient_checkpointing, recipe.target_modules) == \
        (real.gradient_accumulation_steps, True, real.target_modules)
    assert profile("full", "07", model="some/model", dry_run=True)["model"] == "some/model"
    monkeypatch.setenv("BUDGETLIB_DRY_RUN", "1")
    assert profile("full", "03")["sweep"] == ("gsm8k", "test", 4)
    monkeypatch.setenv("BUDGETLIB_DRY_RUN", "0")
    assert "dry_run" not in profile("full", "03")


def test_max_n_caps_the_evaluation_questions_only(monkeypatch):
    monkeypatch.setenv("BUDGETLIB_MAX_N", "64")
    full = profile("full", "05")
    assert full["max_n"] == 64 and all(n == 64 for _, _, n in full["data"].values())
    assert full["train"] == ("gsm8k", "train", 4000)  # training questions keep their number
    assert profile("medium", "03")["sweep"] == ("gsm8k", "test", 64)  # not above the cap
    assert profile("medium", "03")["data"]["gsm8k/test"] == ("gsm8k", "test", 32)  # below it
    monkeypatch.setenv("BUDGETLIB_MAX_N", "lots")
    with pytest.raises(ProfileError, match="BUDGETLIB_MAX_N must be a positive integer, got 'lots'"):
        profile("full", "01")
