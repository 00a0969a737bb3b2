import re

import pytest

from budgetlib.backends import FakeBackend
from budgetlib.data import Problem
from budgetlib.elasticity import budget_sweep, elastic_budgets, sweep_summary
from budgetlib.search import BudgetSearchResult, TraceStep, search_run, summarize_search

PROBLEMS = [Problem(f"p{i}", f"What is {i} plus 1?", str(i + 1), "t") for i in range(4)]


def elastic_model(prompt, *args):
    """Output follows the budget down to 10 tokens, then grows again (token
    elasticity); wrong below budget 8; vanilla writes 60 tokens."""
    i = int(re.search(r"What is (\d+)", prompt).group(1))
    m = re.search(r"less than (\d+) tokens", prompt)
    if m is None:
        return " ".join(["w"] * 59) + f" [[{i + 1}]]"
    b = int(m.group(1))
    n = b if b >= 10 else 10 + (10 - b) * 3
    return " ".join(["w"] * (n - 1)) + f" [[{i + 1 if b >= 8 else i}]]"


def test_sweep_frame_and_summary():
    frame = budget_sweep(FakeBackend(elastic_model), PROBLEMS, [4, 8, 16, 32], max_new_tokens=100)
    assert len(frame) == 16 and set(frame.columns) >= {"id", "budget", "output_tokens", "correct", "within_budget"}
    row = frame[(frame.id == "p1") & (frame.budget == 4)].iloc[0]
    assert (row.output_tokens, row.correct, row.within_budget, row.vanilla_tokens) == (28, False, False, 60)
    summary = sweep_summary(frame).set_index("budget")
    assert summary.loc[16, "mean_output_tokens"] == 16 and summary.loc[16, "within_budget"] == 1.0
    assert summary.loc[8, "accuracy"] == 1.0 and summary.loc[4, "accuracy"] == 0.0
    assert summary.loc[8, "mean_output_tokens"] == 16  # 10 + 2*3: below 10 the budget stops binding


def test_elastic_budgets_find_the_turning_point():
    frame = budget_sweep(FakeBackend(elastic_model), PROBLEMS, [2, 4, 8, 10, 16], max_new_tokens=100)
    eb = elastic_budgets(frame)
    assert list(eb.elastic_budget) == [10] * 4 and list(eb.min_output_tokens) == [10] * 4 and eb.elastic.all()


def test_sweep_rejects_bad_budgets():
    with pytest.raises(ValueError, match="positive integers"):
        budget_sweep(FakeBackend(), PROBLEMS, [0, 5], max_new_tokens=10)


def test_summarize_search_counts_and_saving():
    results = [BudgetSearchResult("a", 100, True, 25, 30, "", True, [TraceStep(50, 60, True, True)]),
               BudgetSearchResult("b", 50, True, 50, 50, "", False, []),
               BudgetSearchResult("c", 80, False, None, 80, "", False, [], "vanilla CoT answer is wrong")]
    s = summarize_search(results)
    assert (s["n"], s["n_vanilla_correct"], s["n_reduced"], s["share_reduced"]) == (3, 2, 1, 0.5)
    assert s["token_saving"] == pytest.approx(1 - 80 / 150) and s["mean_optimal_budget"] == 37.5


def test_search_run_is_computed_once(tmp_path):
    first, run = search_run(FakeBackend(elastic_model), PROBLEMS, dataset="t", profile="smoke", root=tmp_path,
                            max_new_tokens=100)
    assert [r.optimal_budget for r in first] == [15] * 4  # 60 -> 30 -> 15 -> 7 (wrong)
    counting = FakeBackend(elastic_model)
    again, run2 = search_run(counting, PROBLEMS, dataset="t", profile="smoke", root=tmp_path, max_new_tokens=100)
    assert again == first and run2.dir == run.dir and counting.calls == []
    assert run.summary()["n_reduced"] == 4


def test_sweep_run_reads_back_the_same_frame(tmp_path):
    from budgetlib.elasticity import sweep_run

    frame, run = sweep_run(FakeBackend(elastic_model), PROBLEMS, [4, 16], max_new_tokens=50, dataset="t",
                           profile="smoke", root=tmp_path)
    counting = FakeBackend(elastic_model)
    again, run2 = sweep_run(counting, PROBLEMS, [4, 16], max_new_tokens=50, dataset="t", profile="smoke",
                            root=tmp_path)
    assert counting.calls == [] and run2.dir == run.dir
    assert again.to_dict("records") == frame.to_dict("records")


def test_sweep_run_interrupted_after_a_partial_write_does_not_duplicate(tmp_path):
    from budgetlib.elasticity import sweep_run
    from budgetlib.runs import start_run

    frame, run = sweep_run(FakeBackend(elastic_model), PROBLEMS, [4, 16], max_new_tokens=50, dataset="t",
                           profile="smoke", root=tmp_path)
    run.summary_path.unlink()  # as if killed before finish(), after the items were written
    again, _ = sweep_run(FakeBackend(elastic_model), PROBLEMS, [4, 16], max_new_tokens=50, dataset="t",
                         profile="smoke", root=tmp_path)
    assert len(again) == len(frame) == 8 and len(run.items()) == 8


def words_only_model(prompt, *args):
    """Obeys a budget stated in words (writes half of it), ignores one in tokens (60 tokens)."""
    i = int(re.search(r"What is (\d+)", prompt).group(1))
    m = re.search(r"less than (\d+) words", prompt)
    n = 60 if m is None else max(int(m.group(1)) // 2, 2)
    return " ".join(["w"] * (n - 1)) + f" [[{i + 1}]]"


def test_sweep_in_another_wording():
    from budgetlib.prompts import BUDGET_WORDINGS, DIRECT

    fake = FakeBackend(words_only_model)
    tale = sweep_summary(budget_sweep(fake, PROBLEMS, [16, 32], max_new_tokens=100)).set_index("budget")
    words = sweep_summary(budget_sweep(fake, PROBLEMS, [16, 32], max_new_tokens=100,
                                       template=BUDGET_WORDINGS["words"])).set_index("budget")
    assert list(tale.mean_output_tokens) == [60, 60] and list(words.mean_output_tokens) == [8, 16]
    assert words.within_budget.eq(1.0).all() and tale.within_budget.eq(0.0).all()
    with pytest.raises(ValueError, match="has no {budget} field"):
        budget_sweep(fake, PROBLEMS, [16], max_new_tokens=10, template=DIRECT)


def test_budget_wordings_as_methods():
    from budgetlib.evaluate import budgeted

    assert budgeted(50).name == "budget_50" and "use less than 50 tokens" in budgeted(50).template.render("Q", 50)
    words = budgeted(50, "words")
    assert words.name == "budget_50_words" and "less than 50 words" in words.template.render("Q", 50)
    assert "at most 50 tokens" in budgeted(50, "strict").template.render("Q", 50)
    with pytest.raises(ValueError, match="unknown budget wording 'lines'"):
        budgeted(50, "lines")
