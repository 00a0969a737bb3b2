import re

import pytest

from budgetlib.backends import FakeBackend
from budgetlib.data import Problem
from budgetlib.training.selfbudgeter import (build_cold_start, evaluate_selfbudgeter, grpo_prompts, preset_prefix,
                                             preset_sweep)

PROBLEMS = [Problem(f"p{i}", f"What is {i} plus 1?", str(i + 1), "t") for i in range(4)]


def model(prompt, max_new_tokens, temperature, seed, prefix):
    """Vanilla CoT: right on even i, 10 words. SelfBudgeter prompt: states
    budget 6 and writes 6 words, or follows a preset budget exactly."""
    i = int(re.search(r"What is (\d+)", prompt).group(1))
    if "<budget>N</budget>" in prompt:
        if prefix:
            n = int(re.search(r"<budget>(\d+)", prefix).group(1))
            return " ".join(["w"] * (n - 1)) + f" [[{i + 1}]]</solution>"
        return "<budget>6</budget><solution>" + " ".join(["w"] * 5) + f" [[{i + 1}]]</solution>"
    return " ".join(["w"] * 9) + f" [[{i + 1 if i % 2 == 0 else i}]]"


def test_cold_start_labels_budget_with_own_length():
    examples, report = build_cold_start(FakeBackend(model), PROBLEMS, max_new_tokens=64)
    assert [e.id for e in examples] == ["p0", "p2"] and report.skipped == {"wrong": 2}
    assert examples[0].completion == "<budget>10</budget><solution>w w w w w w w w w [[1]]</solution>"
    assert "<budget>N</budget>" in examples[0].prompt and examples[0].budget == 10
    prompts = grpo_prompts(PROBLEMS, examples, cap=128)
    assert [p.upper_budget for p in prompts] == [10, 128, 10, 128] and prompts[1].answer == "2"
    with pytest.raises(ValueError, match="temperature"):
        build_cold_start(FakeBackend(model), PROBLEMS, max_new_tokens=64, samples=2)


def test_evaluation_and_presets():
    rows, summary = evaluate_selfbudgeter(FakeBackend(model), PROBLEMS, max_new_tokens=64)
    assert summary["well_formed_rate"] == 1.0 and summary["accuracy"] == 1.0
    assert summary["mean_stated_budget"] == 6 and summary["within_budget_rate"] == 1.0
    assert rows[0]["n_output_tokens"] == 6 and summary["mean_relative_deviation"] == 0.0
    sweep = preset_sweep(FakeBackend(model), PROBLEMS, [5, 20], max_new_tokens=64)
    assert list(sweep.preset) == [5, 20] and list(sweep.mean_output_tokens) == [5, 20]
    assert list(sweep.within_budget_rate) == [1.0, 1.0] and list(sweep.accuracy) == [1.0, 1.0]
    with pytest.raises(ValueError, match="positive integer"):
        preset_prefix(0)


def test_malformed_outputs_are_reported():
    rows, summary = evaluate_selfbudgeter(FakeBackend(lambda *a: "just [[1]]"), PROBLEMS[:1], max_new_tokens=8)
    assert summary["well_formed_rate"] == 0.0 and rows[0]["problem"] == "no <budget>N</budget>"
    assert rows[0]["correct"] and summary["within_budget_rate"] is None
