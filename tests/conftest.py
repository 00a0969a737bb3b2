import os

import pytest

from budgetlib.answers import extract_answer
from budgetlib.backends import FakeBackend


@pytest.fixture(autouse=True)
def isolated_paths(tmp_path_factory, monkeypatch):
    """Tests never write into the user's results dir. The cache dir (the
    converted model) is shared, since converting is slow; tests that use the
    generation cache pass their own temporary path."""
    monkeypatch.setenv("BUDGETLIB_RESULTS", str(tmp_path_factory.mktemp("results")))
    monkeypatch.setenv("BUDGETLIB_GEN_CACHE", "on")
    # llama.cpp engines started by tests coordinate among themselves, not with a developer's other runs
    engines = tmp_path_factory.getbasetemp() / "engines"
    engines.mkdir(exist_ok=True)
    monkeypatch.setattr("budgetlib.backends.cores._engines_dir", lambda: engines)
    yield


def solving_responder(prompt, max_new_tokens, temperature, seed, prefix):
    """A scripted 'model': answers 'X has a ... gets b more' problems correctly
    when the question number is even, and wrongly otherwise; the CoT is longer
    without a budget."""
    import re

    nums = [int(n) for n in re.findall(r"\d+", prompt.split("\n")[0])]
    truth = nums[0] + nums[1] if "more" in prompt.split("\n")[0] else nums[0] - nums[1]
    answer = truth if nums[0] % 2 == 0 else truth + 1
    words = 4 if "less than" in prompt else 12
    return " ".join(["think"] * words) + f" Answer: [[{answer}]]"


@pytest.fixture
def fake():
    return FakeBackend(solving_responder, model_id="fake-solver")
