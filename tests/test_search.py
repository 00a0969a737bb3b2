import hashlib
import itertools
import json
import re

import pytest

from budgetlib.backends import FakeBackend
from budgetlib.data import Problem
from budgetlib.runs import RunError
from budgetlib.search import (BudgetSearchResult, SearchConfig, TraceStep, search_budgets,
                              search_budgets_sequential)

BUDGET = re.compile(r"use less than (\d+) tokens")


def problem(i):
    return Problem(f"q:{i}", f"Question number {i}: what is {i} plus one?", str(i + 1), "q")


def scripted(prompt, max_new_tokens, temperature, seed, prefix):
    """Deterministic, deliberately non-monotone: whether a budget works and
    how long the answer is depend on a hash of (question, budget)."""
    q = prompt.split("\n")[0]
    i = int(re.search(r"number (\d+)", q).group(1))
    m = BUDGET.search(prompt)
    h = hashlib.sha256(f"{q}|{m.group(1) if m else 'vanilla'}".encode()).digest()
    if m is None:
        length, right = 20 + h[0] % 200, h[1] % 5 != 0
    else:
        budget = int(m.group(1))
        length = max(1, min(budget + h[0] % 7 - 3, 250)) if h[2] % 4 else 30 + h[0] % 150
        right = h[1] % 3 != 0
    answer = i + 1 if right else i + 2
    return " ".join(["w"] * (length - 2)) + f" Answer: [[{answer}]]"


PROBLEMS = [problem(i) for i in range(300)]


@pytest.mark.parametrize(("strategy", "feasibility"), list(itertools.product(("halving", "binary"),
                                                                              ("elastic", "correct"))))
def test_batched_equals_sequential(strategy, feasibility):
    kw = dict(strategy=strategy, feasibility=feasibility, max_new_tokens=256, min_budget=2, tolerance=3)
    batched_backend = FakeBackend(scripted)
    batched = search_budgets(batched_backend, PROBLEMS, batch_size=64, group_size=128, progress=False, **kw)
    sequential = search_budgets_sequential(FakeBackend(scripted), PROBLEMS, **kw)
    assert batched == sequential
    assert max(len(c) for c in batched_backend.calls) == 64
    # the scripted model makes every kind of outcome appear
    assert {r.reason for r in batched} >= {None, "vanilla CoT answer is wrong", "no smaller budget was feasible"}
    assert any(not s.feasible and s.correct for r in batched for s in r.trace) == (feasibility == "elastic")


def answers_with(tokens_by_budget, vanilla_tokens, correct_budgets):
    def respond(prompt, *args):
        m = BUDGET.search(prompt)
        if m is None:
            return " ".join(["w"] * (vanilla_tokens - 1)) + " [[2]]"
        b = int(m.group(1))
        right = b in correct_budgets
        return " ".join(["w"] * (tokens_by_budget[b] - 1)) + (" [[2]]" if right else " [[3]]")
    return FakeBackend(respond)


ONE = [Problem("p", "What is 1 plus 1?", "2", "t")]


def test_halving_follows_tale_and_stops_at_first_infeasible():
    # vanilla 100 tokens; 50 ok (60 tokens), 25 ok (30 tokens), 12 wrong
    backend = answers_with({50: 60, 25: 30, 12: 10, 6: 5}, 100, {50, 25, 6})
    (r,) = search_budgets(backend, ONE, progress=False)
    assert (r.optimal_budget, r.output_tokens, r.reduced, r.vanilla_tokens) == (25, 30, True, 100)
    assert r.trace == [TraceStep(50, 60, True, True), TraceStep(25, 30, True, True), TraceStep(12, 10, False, False)]


def test_elastic_rejects_a_longer_answer_that_correct_accepts():
    # budget 25 is answered correctly but LONGER than at 50: token elasticity
    backend = answers_with({50: 40, 25: 70, 12: 20, 6: 5, 3: 3, 1: 1}, 100, {50, 25, 12, 6, 3, 1})
    (elastic,) = search_budgets(backend, ONE, progress=False)
    assert elastic.optimal_budget == 50 and elastic.trace[-1] == TraceStep(25, 70, True, False)
    (plain,) = search_budgets(backend, ONE, feasibility="correct", progress=False)
    assert plain.optimal_budget == 1  # keeps halving down to min_budget
    assert [s.budget for s in plain.trace] == [50, 25, 12, 6, 3, 1]


def test_binary_bisects_to_tolerance():
    tokens = {b: b for b in range(1, 101)}
    backend = answers_with(tokens, 100, set(range(17, 101)))  # feasible iff budget >= 17
    (r,) = search_budgets(backend, ONE, strategy="binary", feasibility="correct", progress=False)
    assert r.optimal_budget == 17 and r.reduced
    assert [s.budget for s in r.trace] == [50, 25, 12, 18, 15, 16, 17]
    (coarse,) = search_budgets(backend, ONE, strategy="binary", feasibility="correct", tolerance=10,
                               progress=False)
    assert coarse.optimal_budget == 18 and [s.budget for s in coarse.trace] == [50, 25, 12, 18]


def test_no_feasible_candidate_keeps_vanilla():
    backend = answers_with({50: 10, 25: 10}, 100, set())
    (r,) = search_budgets(backend, ONE, progress=False)
    assert (r.optimal_budget, r.reduced, r.output_tokens) == (100, False, 100)
    assert r.output_text.endswith("[[2]]") and r.reason == "no smaller budget was feasible"


def test_wrong_vanilla_is_kept_with_reason():
    backend = FakeBackend(lambda *a: "w w Answer: [[7]]")
    (r,) = search_budgets(backend, ONE, progress=False)
    assert r.optimal_budget is None and r.vanilla_correct is False and r.reason == "vanilla CoT answer is wrong"
    assert r.trace == [] and len(backend.calls) == 1


def test_min_budget_floor():
    backend = answers_with({b: 1 for b in range(1, 9)}, 8, set(range(1, 9)))
    (r,) = search_budgets(backend, ONE, feasibility="correct", min_budget=2, progress=False)
    assert [s.budget for s in r.trace] == [4, 2] and r.optimal_budget == 2


class Dies(FakeBackend):
    def __init__(self, respond, after):
        super().__init__(respond)
        self.after = after

    def generate(self, prompts, **kw):
        if len(self.calls) >= self.after:
            raise KeyboardInterrupt("killed")
        return super().generate(prompts, **kw)


def _run(tmp_path, backend, problems, **kw):
    from budgetlib.runs import open_run
    from budgetlib.search import search_config

    return open_run(tmp_path / "run", search_config(backend, problems, "t", **kw))


def test_killed_run_resumes_to_identical_results(tmp_path):
    kw = dict(max_new_tokens=256, batch_size=16, group_size=40, progress=False)
    full = search_budgets(FakeBackend(scripted), PROBLEMS[:120], **kw)
    run = _run(tmp_path, FakeBackend(scripted), PROBLEMS[:120], **kw)
    dying = Dies(scripted, after=9)
    with pytest.raises(KeyboardInterrupt):
        search_budgets(dying, PROBLEMS[:120], run=run, **kw)
    written = run.items()
    assert 0 < len(written) < 120
    with run.items_path.open("a") as f:
        f.write('{"id": "q:99", "vanilla_tok')  # a write cut off mid-line
    resumed_backend = FakeBackend(scripted)
    resumed = search_budgets(resumed_backend, PROBLEMS[:120], run=run, **kw)
    assert resumed == full
    assert sorted(r["id"] for r in run.items()) == sorted(p.id for p in PROBLEMS[:120])  # none lost, none twice
    # every answer the killed run had got was kept: the rerun asked only for the rest
    asked_before = sum(len(c) for c in dying.calls)
    asked_after = sum(len(c) for c in resumed_backend.calls)
    fresh = FakeBackend(scripted)
    search_budgets(fresh, PROBLEMS[:120], **kw)
    assert asked_after == sum(len(c) for c in fresh.calls) - asked_before
    # a third run does nothing and reads everything back
    again = FakeBackend(scripted)
    assert search_budgets(again, PROBLEMS[:120], run=run, **kw) == full and again.calls == []
    assert search_budgets_sequential(again, PROBLEMS[:120], run=run, max_new_tokens=256) == full


def test_a_search_killed_mid_question_keeps_its_rounds(tmp_path):
    """One group of 40 questions killed after two rounds, most of them mid-search: the rerun repeats no answer."""
    kw = dict(max_new_tokens=256, batch_size=None, group_size=None, progress=False)
    run = _run(tmp_path, FakeBackend(scripted), PROBLEMS[:40], **kw)
    dying = Dies(scripted, after=2)  # the vanilla round and one budget round
    with pytest.raises(KeyboardInterrupt):
        search_budgets(dying, PROBLEMS[:40], run=run, **kw)
    assert len(run.items()) < 30  # only questions whose vanilla answer was wrong (or that stopped at once) finished
    resumed = FakeBackend(scripted)
    assert search_budgets(resumed, PROBLEMS[:40], run=run, **kw) == search_budgets(FakeBackend(scripted),
                                                                                  PROBLEMS[:40], **kw)
    assert not set(map(tuple, resumed.calls)) & set(map(tuple, dying.calls))  # no round asked twice


def test_results_from_another_config_are_refused(tmp_path):
    from budgetlib.search import search_run

    kw = dict(dataset="t", profile="smoke", progress=False)
    _, run = search_run(FakeBackend(scripted), PROBLEMS[:5], run_dir=tmp_path / "r", **kw)
    with pytest.raises(RunError, match="different config"):
        search_run(FakeBackend(scripted), PROBLEMS[:5], run_dir=tmp_path / "r", strategy="binary", **kw)
    with pytest.raises(RunError, match="different config"):
        search_run(FakeBackend(scripted, model_id="other"), PROBLEMS[:5], run_dir=tmp_path / "r", **kw)
    assert run.label == "optimal budget search (halving, elastic)" and run.metadata["kind"] == "search"


def test_bad_input():
    with pytest.raises(ValueError, match="min_budget must be a positive integer"):
        search_budgets(FakeBackend(), ONE, min_budget=0)
    with pytest.raises(ValueError, match="strategy must be one of"):
        search_budgets(FakeBackend(), ONE, strategy="ternary")
    with pytest.raises(ValueError, match="no problems"):
        search_budgets(FakeBackend(), [])
    with pytest.raises(ValueError, match="unique"):
        search_budgets(FakeBackend(), ONE + ONE)

    class Short(FakeBackend):
        def generate(self, prompts, **kw):
            return super().generate(prompts, **kw)[:-1]

    with pytest.raises(RuntimeError, match="returned 1 generations for 2 prompts"):
        search_budgets(Short(scripted), PROBLEMS[:2], progress=False)


def test_result_row_round_trip():
    r = BudgetSearchResult("a", 10, True, 5, 4, "t", True, [TraceStep(5, 4, True, True)])
    assert BudgetSearchResult.from_row(json.loads(json.dumps(r.to_row()))) == r
    with pytest.raises(ValueError):
        SearchConfig(tolerance=0)


def test_a_truncated_answer_is_never_beta0_nor_feasible():
    def respond(prompt, max_new_tokens, *rest):
        if "q:0" in prompt:  # runs to the cap without budget, and at a budget too
            return " ".join(["loop"] * 500)
        if "less than" in prompt:  # q:1: right at 8, but its answer at 4 is cut off
            budget = int(re.search(r"less than (\d+)", prompt).group(1))
            return "step " * 2 + "Answer: [[1]]" if budget >= 8 else " ".join(["step"] * 100) + " Answer: [[1]]"
        return " ".join(["step"] * 20) + " Answer: [[1]]"

    problems = [Problem("q:0", "q:0", "1", "t"), Problem("q:1", "q:1", "1", "t")]
    loop, cut = search_budgets(FakeBackend(respond), problems, max_new_tokens=60, progress=False)
    assert (loop.optimal_budget, loop.vanilla_correct, loop.reason) == (None, False,
                                                                        "vanilla CoT answer was cut at max_new_tokens")
    assert [(t.budget, t.truncated, t.feasible) for t in cut.trace] == [(11, False, True), (5, True, False)]
    assert cut.optimal_budget == 11
    from budgetlib.search import summarize_search

    summary = summarize_search([loop, cut])
    assert summary["n_vanilla_truncated"] == 1 and summary["candidate_truncated_rate"] == 0.5


@pytest.mark.parametrize("change", ["nothing", "strategy", "model", "max_new_tokens", "ids"])
def test_search_run_starts_anew_exactly_when_an_input_changes(tmp_path, change):
    from budgetlib.search import search_run

    kw = dict(dataset="t", profile="smoke", root=tmp_path, max_new_tokens=64)
    _, first = search_run(FakeBackend(scripted), PROBLEMS[:4], **kw)
    counting = FakeBackend(scripted, model_id="other" if change == "model" else FakeBackend(scripted).model_id)
    problems = PROBLEMS[:3] if change == "ids" else PROBLEMS[:4]
    if change == "strategy":
        kw["strategy"] = "binary"
    if change == "max_new_tokens":
        kw["max_new_tokens"] = 65
    _, again = search_run(counting, problems, **kw)
    if change == "nothing":
        assert again.dir == first.dir and counting.calls == []
    else:
        assert again.dir != first.dir and counting.calls, change
