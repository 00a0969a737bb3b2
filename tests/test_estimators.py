import math

import numpy as np
import pytest

from budgetlib.backends import FakeBackend
from budgetlib.data import Problem
from budgetlib.estimators import (BudgetEstimate, ConstantEstimator, LearnedEstimator, OracleEstimator,
                                  ZeroShotEstimator, label_from_search, parse_budget)
from budgetlib.evaluate import VANILLA, estimated, evaluate, evaluate_run, paired_comparison
from budgetlib.search import BudgetSearchResult, TraceStep

PROBLEMS = [Problem(f"p{i}", f"What is {i} plus 1?", str(i + 1), "t") for i in range(6)]


@pytest.mark.parametrize(("text", "expected"), [
    ("Budget: [[120]]", 120), ("[[ 45 ]] tokens", 45), ("Budget: 35", 35), ("budget=12.", 12), ("80", 80),
    ("  64. ", 64), ("[[1,200]]", 1200), ("first [[10]] then [[20]]", 10), ("[[40]] ... [[7]]", 40), ("Budget: [[12]] about fifty", 12),
    ("about fifty", None), ("[[ ]]", None), ("-20", None), ("[[-20]]", None), ("1e9", None), ("[[1e9]]", None),
    ("[[0]]", None), ("", None), ("I need 30 or 40 tokens", None), ("[[12.5]]", None), ("Budget: lots", None),
    ("format [[budget]], so Budget: [[64]]; 3 + 4 = [[7]]", 64), ("[[-5]] no, [[30]]", 30),
    ("[[12.5]] or Budget: 30", 30), ("Budget: 30 then [[50]]", 50),
])
def test_parse_budget(text, expected):
    assert parse_budget(text) == expected


def scripted_estimates(outputs):
    def respond(prompt, *args):
        i = int(prompt.split("What is ")[1].split(" ")[0])
        return outputs[i]
    return FakeBackend(respond)


def test_zero_shot_parses_clamps_and_falls_back():
    outputs = ["Budget: [[50]]", "about fifty", "[[5000]]", "[[ ]]", "-20", "1e9"]
    est = ZeroShotEstimator(scripted_estimates(outputs), max_budget=512).estimate(PROBLEMS)
    assert [e.budget for e in est] == [50, None, 512, None, None, None]
    assert [e.source for e in est] == ["zero_shot", "zero_shot:fallback", "zero_shot:clamped",
                                       "zero_shot:fallback", "zero_shot:fallback", "zero_shot:fallback"]
    assert est[1].raw == "about fifty" and est[0].cost_tokens == 2
    default = ZeroShotEstimator(scripted_estimates(outputs), fallback=64).estimate(PROBLEMS)
    assert [e.budget for e in default] == [50, 64, 2048, 64, 64, 64]
    with pytest.raises(ValueError, match="fallback"):
        ZeroShotEstimator(FakeBackend(), fallback=-1)


def test_zero_shot_lets_the_estimator_reason_before_the_budget():
    """An estimator that reasons for more than 32 tokens before writing [[40]]
    (then solves the problem, writing [[7]]) gets 40 under the default cap; the
    old 32-token cap cut it off before the budget: a recorded fallback."""
    reasoning = " ".join(["think"] * 60) + " so Budget: [[40]]. Now 3 + 4 = 7, [[7]]"
    backend = FakeBackend(lambda *args: reasoning)
    assert ZeroShotEstimator(backend).max_new_tokens == 1024
    [est] = ZeroShotEstimator(backend).estimate(PROBLEMS[:1])
    assert (est.budget, est.source, est.cost_tokens) == (40, "zero_shot", len(reasoning.split()))
    [cut] = ZeroShotEstimator(backend, max_new_tokens=32).estimate(PROBLEMS[:1])
    assert (cut.budget, cut.source, cut.cost_tokens) == (None, "zero_shot:fallback", 32)
    [fixed] = ZeroShotEstimator(backend, max_new_tokens=32, fallback=64).estimate(PROBLEMS[:1])
    assert (fixed.budget, fixed.source) == (64, "zero_shot:fallback")  # recorded, never -1


def test_oracle_and_constant():
    results = [BudgetSearchResult("p0", 80, True, 20, 18, "", True),
               BudgetSearchResult("p1", 80, False, None, 80, "", False, [], "vanilla CoT answer is wrong")]
    est = OracleEstimator.from_search(results).estimate(PROBLEMS[:3])
    assert est == [BudgetEstimate(20, "oracle"), BudgetEstimate(None, "oracle:fallback"),
                   BudgetEstimate(None, "oracle:fallback")]
    assert ConstantEstimator(32).estimate(PROBLEMS[:2]) == [BudgetEstimate(32, "constant")] * 2


def test_label_intervals_respect_the_search():
    halving = BudgetSearchResult("a", 100, True, 25, 20, "", True,
                                 [TraceStep(50, 40, True, True), TraceStep(25, 20, True, True),
                                  TraceStep(12, 30, False, False)])
    binary = BudgetSearchResult("b", 100, True, 17, 15, "", True,
                                [TraceStep(50, 40, True, True), TraceStep(16, 30, False, False),
                                 TraceStep(17, 15, True, True)])
    unreduced = BudgetSearchResult("c", 60, True, 60, 60, "", False, [TraceStep(30, 50, False, False)])
    assert label_from_search(halving) == (12, 25) and label_from_search(binary) == (16, 17)
    assert label_from_search(unreduced) == (30, 60)
    assert label_from_search(BudgetSearchResult("d", 9, False, None, 9, "", False)) is None


def fake_encoder(texts):
    """Two features: the number in the question and 1."""
    return np.array([[float(t.split("What is ")[1].split(" ")[0]), 1.0] for t in texts])


def test_learned_estimator_recovers_a_log_linear_rule(tmp_path):
    # true minimal budget = 2 ** (4 + i/2): binary-search labels (tolerance 1)
    problems = [Problem(f"p{i}", f"What is {i} plus 1?", str(i + 1), "t") for i in range(12)]
    results = []
    for i in range(12):
        b = round(2 ** (4 + i / 2))
        results.append(BudgetSearchResult(f"p{i}", 4 * b, True, b, b, "", True,
                                          [TraceStep(b - 1, b, False, False), TraceStep(b, b, True, True)]))
    est = LearnedEstimator(alpha=1e-6, encoder=fake_encoder).fit(problems, results)
    budgets = [e.budget for e in est.estimate(problems)]
    assert all(abs(math.log2(p) - math.log2(r.optimal_budget)) < 0.1 for p, r in zip(budgets, results))
    path = tmp_path / "est.json"
    est.save(path)
    assert [e.budget for e in LearnedEstimator.load(path, encoder=fake_encoder).estimate(problems)] == budgets
    with pytest.raises(RuntimeError, match="not fitted"):
        LearnedEstimator(encoder=fake_encoder).estimate(problems)


def budget_follower(prompt, *args):
    """Right answer always; obeys a stated budget; vanilla writes 40 tokens."""
    i = int(prompt.split("What is ")[1].split(" ")[0])
    if "less than" in prompt:
        n = int(prompt.split("less than ")[1].split(" ")[0])
        return " ".join(["w"] * (min(n, 40) - 1)) + f" [[{i + 1}]]"
    return " ".join(["w"] * 39) + f" [[{i + 1}]]"


def test_tale_ep_method_with_fallback_and_cost(tmp_path):
    estimator = ZeroShotEstimator(scripted_estimates(["[[10]]", "no idea", "[[20]]", "[[10]]", "[[5]]", "[[30]]"]))
    ev = evaluate(FakeBackend(budget_follower), PROBLEMS, estimated("tale_ep", estimator), max_new_tokens=64)
    assert [r["budget"] for r in ev.rows] == [10, None, 20, 10, 5, 30]
    assert [r["n_output_tokens"] for r in ev.rows] == [10, 40, 20, 10, 5, 30]  # fallback = vanilla CoT
    s = ev.summary
    assert s["accuracy"] == 1.0 and s["fallback_rate"] == pytest.approx(1 / 6)
    assert s["within_budget_rate"] == 1.0 and s["mean_budget"] == 15
    assert s["estimator_tokens"] == 1 + 2 + 1 + 1 + 1 + 1 and s["expense_usd"] == 0.0
    assert s["mean_total_tokens"] == pytest.approx((115 + 7) / 6)


def test_expense_uses_the_price_table():
    from budgetlib.tokens import PriceTable, Price

    table = PriceTable("2026-01-01", {"fake": Price(0.0, 2.0)})
    ev = evaluate(FakeBackend(budget_follower, model_id="fake"), PROBLEMS, VANILLA, max_new_tokens=64, prices=table)
    assert ev.summary["expense_usd"] == pytest.approx(6 * 40 * 2.0 / 1e6)


def test_estimated_runs_are_keyed_by_their_budgets(tmp_path):
    backend = FakeBackend(budget_follower)
    a = evaluate_run(backend, PROBLEMS, estimated("c", ConstantEstimator(8)), max_new_tokens=64, dataset="t",
                     profile="smoke", root=tmp_path)
    b = evaluate_run(backend, PROBLEMS, estimated("c", ConstantEstimator(16)), max_new_tokens=64, dataset="t",
                     profile="smoke", root=tmp_path)
    assert a.run.dir != b.run.dir and a.summary["mean_output_tokens"] == 8 and b.summary["mean_output_tokens"] == 16


def test_paired_comparison_properties():
    a = [{"id": str(i), "correct": True, "n_output_tokens": 50} for i in range(10)]
    same = paired_comparison(a, a)
    assert same["mcnemar_p"] == 1.0 and same["mean_token_diff"] == 0 and same["token_diff_ci_low"] == 0
    with pytest.raises(ValueError, match="same question ids"):
        paired_comparison(a, a[:5])


def test_cross_validation_beats_the_constant_on_a_learnable_rule():
    from budgetlib.estimators import cross_validate

    problems = [Problem(f"p{i}", f"What is {i} plus 1?", str(i + 1), "t") for i in range(20)]
    results = [BudgetSearchResult(f"p{i}", 4000, True, round(2 ** (4 + i / 4)), 1, "", True,
                                  [TraceStep(round(2 ** (4 + i / 4)) - 1, 1, False, False)]) for i in range(20)]
    zero = {f"p{i}": BudgetEstimate(None if i % 2 else 100, "zero_shot") for i in range(20)}
    frame, errors = cross_validate(problems, results, k=5, alpha=1e-6, others={"zero_shot": zero},
                                   encoder=fake_encoder)
    assert len(frame) == 20 and sorted(frame.id) == sorted(p.id for p in problems)
    table = errors.set_index("estimator")
    assert table.loc["learned", "mean_abs_log2_error"] < 0.2 < table.loc["constant", "mean_abs_log2_error"]
    assert table.loc["zero_shot", "n"] == 10 and table.loc["zero_shot", "missing (fallback)"] == 10
    with pytest.raises(ValueError, match="at least 3"):
        cross_validate(problems, results[:2], encoder=fake_encoder)


def test_zero_shot_prefill_is_parsed_with_the_output():
    seen = []

    def respond(prompt, max_new_tokens, temperature, seed, prefix):
        seen.append(prefix)
        return "40]] tokens"

    est = ZeroShotEstimator(FakeBackend(respond), assistant_prefix="Budget: [[").estimate(PROBLEMS[:2])
    assert [e.budget for e in est] == [40, 40] and est[0].raw == "Budget: [[40]] tokens" and seen == ["Budget: [["] * 2
    from budgetlib.backends import PrefillUnsupported

    with pytest.raises(PrefillUnsupported):
        ZeroShotEstimator(FakeBackend(supports_prefix=False), assistant_prefix="[[").estimate(PROBLEMS[:1])


def test_paired_comparison_against_hand_computed_values():
    # 10 questions: a right on 0-5, b right on 4-9 -> discordant 4 (a only) vs 4 (b only): p = 1
    # b writes 10 tokens fewer on every question -> mean diff -10, interval [-10, -10]
    a = [{"id": str(i), "correct": i < 6, "n_output_tokens": 50 + i} for i in range(10)]
    b = [{"id": str(i), "correct": i >= 4, "n_output_tokens": 40 + i} for i in range(10)]
    r = paired_comparison(a, b)
    assert (r["a_only_correct"], r["b_only_correct"], r["mcnemar_p"]) == (4, 4, 1.0)
    assert r["mean_token_diff"] == -10 and r["token_diff_ci_low"] == r["token_diff_ci_high"] == -10
    # 7 discordant, all for b: two-sided exact p = 2 * 0.5**7
    c = [{"id": str(i), "correct": i < 7, "n_output_tokens": 1} for i in range(10)]
    d = [{"id": str(i), "correct": False, "n_output_tokens": 1} for i in range(10)]
    assert paired_comparison(d, c)["mcnemar_p"] == pytest.approx(2 * 0.5 ** 7)
    with pytest.raises(ValueError, match="at least one question"):
        paired_comparison([], [])
