import math
import random

import pytest

from budgetlib.training.rewards import (BUDGET_PENALTY, MALFORMED_REWARD, S_C_MAX, S_C_MIN, S_W_MAX, S_W_MIN,
                                        anneal_alpha, anneal_tolerance, budget_penalty, format_reward, l1_reward, length_term,
                                        parse_selfbudgeter, selfbudgeter_reward)

ALPHAS = [0.0, 0.1, 0.3, 0.5, 0.9]


def answer(budget, words, right=True):
    """A well-formed completion of exactly `words` whitespace words."""
    body = " ".join(["w"] * (words - 1))  # the first w shares a word with the tags
    return f"<budget>{budget}</budget><solution>{body} [[{2 if right else 3}]]</solution>"


def reward(completion, alpha, upper=1000, ids=None, tolerance=1.0):
    """The reward at peak shift `alpha` and width `tolerance` x b (1.0: a whole budget from the peak is the floor)."""
    return selfbudgeter_reward([completion], answer=["2"], upper_budget=[upper], alpha=alpha,
                               completion_ids=ids, tolerance=tolerance)[0]


def scored(budget, length, alpha, right=True, upper=math.inf):
    """The reward of a well-formed answer stating `budget`, `length` tokens long (exact, via completion_ids)."""
    return reward(answer(budget, 3, right), alpha, upper=upper, ids=[[0] * length])


def test_constants_satisfy_the_papers_constraint():
    assert S_C_MIN + BUDGET_PENALTY >= S_W_MAX  # a penalised correct answer still beats any wrong one
    assert S_W_MIN < S_W_MAX < S_C_MIN < S_C_MAX and BUDGET_PENALTY < 0
    assert MALFORMED_REWARD < S_W_MIN + BUDGET_PENALTY  # below every well-formed answer


@pytest.mark.parametrize("alpha", ALPHAS)
def test_ordering_at_any_alpha(alpha):
    on_budget, far_over, wrong = reward(answer(40, 40), alpha), reward(answer(40, 400), alpha), \
        reward(answer(40, 40, right=False), alpha)
    malformed = reward("[[2]] no tags", alpha)
    assert on_budget >= far_over > wrong > malformed == MALFORMED_REWARD


def test_tight_alpha_prefers_within_budget_over_4x():
    assert reward(answer(40, 39), 0.1) > reward(answer(40, 160), 0.1) > reward(answer(40, 40, right=False), 0.1)


def test_over_stated_budget_is_penalised():
    honest, inflated = reward(answer(40, 40), 0.5, upper=50), reward(answer(400, 40), 0.5, upper=50)
    assert honest > inflated
    # but a correct inflated answer still beats any wrong one
    assert inflated > reward(answer(40, 40, right=False), 0.5, upper=50)
    assert reward(answer(400, 40, right=False), 0.5, upper=50) < reward(answer(40, 40, right=False), 0.5, upper=50)


def _grid():
    """(budget, length, alpha, upper) over a grid and seeded random draws."""
    rng = random.Random(0)
    cases = [(b, n, a, u) for b in (1, 5, 50, 500) for n in (1, 3, 50, 900) for a in ALPHAS
             for u in (1, 4, 60, 10_000, math.inf, None)]
    cases += [(rng.randint(1, 2000), rng.randint(1, 4000), rng.uniform(0, 0.999), rng.choice([rng.randint(1, 2000),
                                                                                              math.inf]))
              for _ in range(3000)]
    return cases


def test_a_every_correct_answer_beats_every_wrong_one_even_penalised():
    grid = _grid()
    corrects = [scored(b, n, a, True, u) for b, n, a, u in grid]
    wrongs = [scored(b, n, a, False, u) for b, n, a, u in grid]
    assert min(corrects) >= S_C_MIN + BUDGET_PENALTY >= S_W_MAX >= max(wrongs)
    assert min(corrects) > max(wrongs)  # strictly, with our constants
    assert max(corrects) <= S_C_MAX and min(wrongs) >= S_W_MIN + BUDGET_PENALTY
    # an honest budget (b <= b_max) never scores below an inflated one, whatever the lengths
    honest = [scored(b, n, a, True, u) for b, n, a, u in grid if u is None or b <= u]
    inflated = [scored(b, n, a, True, u) for b, n, a, u in grid if u is not None and b > u]
    assert inflated and min(honest) >= max(inflated)


@pytest.mark.parametrize(("budget", "alpha"), [(100, 0.0), (100, 0.1), (100, 0.3), (100, 0.5), (20, 0.1), (20, 0.5),
                                               (250, 0.2)])
def test_b_correct_answers_peak_at_one_minus_alpha_times_budget(budget, alpha):
    peak = round((1 - alpha) * budget)
    lengths = range(1, 3 * budget)
    scores = {n: scored(budget, n, alpha) for n in lengths}
    assert max(scores, key=scores.get) == peak and scores[peak] == S_C_MAX
    assert all(scores[n] < scores[n + 1] for n in range(max(1, peak - budget + 1), peak))  # rising to the peak
    assert all(scores[n] > scores[n + 1] for n in range(peak, peak + budget - 1))  # falling after it
    assert scores[peak + budget] == S_C_MIN  # a whole budget past the peak: the floor
    # highest at or below the budget: d tokens under it scores at least as much as d tokens over it
    assert all(scores[budget - d] >= scores[budget + d] for d in range(0, budget))


@pytest.mark.parametrize(("budget", "alpha"), [(100, 0.0), (100, 0.1), (100, 0.3), (100, 0.5), (20, 0.5), (250, 0.2)])
def test_c_wrong_answers_length_term_rises_toward_one_plus_alpha_times_budget(budget, alpha):
    peak = round((1 + alpha) * budget)
    scores = {n: scored(budget, n, alpha, right=False) for n in range(1, 3 * budget)}
    assert max(scores, key=scores.get) == peak and scores[peak] == S_W_MAX
    # a wrong answer is penalised less the longer it thinks, up to (1 + alpha) b
    assert all(scores[n] <= scores[n + 1] for n in range(1, peak))
    assert all(scores[n] < scores[n + 1] for n in range(peak - budget + 1, peak))
    assert scores[1] < scores[budget] <= scores[peak]


def test_d_budget_penalty_is_the_constant_exactly_when_over_b_max():
    for b, n, a, u in _grid():
        for right in (True, False):
            free = scored(b, n, a, right, math.inf)
            assert scored(b, n, a, right, None) == free  # never answered correctly: no penalty
            expected = BUDGET_PENALTY if u is not None and b > u else 0.0
            assert scored(b, n, a, right, u) - free == pytest.approx(expected, abs=1e-12)
    assert budget_penalty(51, 50) == BUDGET_PENALTY and budget_penalty(50, 50) == 0.0  # b = b_max is allowed
    assert budget_penalty(10 ** 9, math.inf) == budget_penalty(10 ** 9, None) == 0.0


def test_e_malformed_is_below_every_well_formed_answer():
    grid = _grid()
    lowest = min(min(scored(b, n, a, False, u), scored(b, n, a, True, u)) for b, n, a, u in grid)
    malformed = ["[[2]] no tags", "<budget>40</budget><solution>so [[2]]", "<budget>0</budget><solution>[[2]]</solution>",
                 "<solution>[[2]]</solution>", "<budget>9</budget><solution>[[2]]</solution> extra", ""]
    scores = selfbudgeter_reward(malformed, answer=["2"] * len(malformed), upper_budget=[math.inf] * len(malformed),
                                 alpha=0.1)
    assert scores == [MALFORMED_REWARD] * len(malformed) and max(scores) < lowest


def test_length_term_and_alpha_range():
    assert length_term(90, 100, 0.1, True) == S_C_MAX and length_term(110, 100, 0.1, False) == S_W_MAX
    for alpha in (-0.1, 1.0, 6.0):
        with pytest.raises(ValueError, match="alpha"):
            length_term(10, 10, alpha, True)
        with pytest.raises(ValueError, match="alpha"):
            selfbudgeter_reward([answer(10, 10)], answer=["2"], upper_budget=[99], alpha=alpha)


def test_chat_message_completions_and_token_ids():
    msg = [[{"role": "assistant", "content": answer(10, 10)}]]
    assert selfbudgeter_reward(msg, answer=["2"], upper_budget=[99], alpha=0.0, tolerance=1.0) == [S_C_MAX]
    # with completion_ids the length is the token count: 20 tokens against a budget of 10 -> a whole budget
    # past the peak at alpha 0: the floor
    assert selfbudgeter_reward(msg, answer=["2"], upper_budget=[99], alpha=0.0, tolerance=1.0,
                               completion_ids=[[0] * 20]) == [S_C_MIN]
    with pytest.raises(TypeError, match="chat messages"):
        format_reward([42])
    with pytest.raises(ValueError):
        selfbudgeter_reward(msg, answer=["2", "3"], upper_budget=[99])


def test_alpha_anneals_from_trainer_state():
    class State:
        def __init__(self, step):
            self.global_step, self.max_steps = step, 100

    assert anneal_alpha(State(0)) == 0.5 and anneal_alpha(State(100)) == pytest.approx(0.1)
    assert anneal_alpha() == 0.5 and anneal_alpha(State(50)) == pytest.approx(0.3)
    assert anneal_tolerance(State(0)) == 6.0 and anneal_tolerance(State(100)) == pytest.approx(0.1)
    assert anneal_tolerance() == 6.0 and anneal_tolerance(State(50)) == pytest.approx(3.05)

    def at(words, step):
        return selfbudgeter_reward([answer(40, words)], answer=["2"], upper_budget=[99], trainer_state=State(step))[0]

    # early (alpha 0.5, tolerance 6): wide, nearly flat: half the budget and the whole budget score almost alike,
    # so early training is not paid to write half its budget
    assert at(20, 0) == S_C_MAX and at(20, 0) - at(40, 0) < 0.02 * (S_C_MAX - S_C_MIN)
    # late (alpha 0.1, tolerance 0.1): tight around 0.9 b = 36; half the budget is far outside the tolerance
    assert at(36, 100) == S_C_MAX and at(20, 100) == S_C_MIN and at(38, 100) > at(44, 100) == S_C_MIN


def test_logged_metrics():
    logged = {}
    selfbudgeter_reward([answer(40, 40), answer(400, 40), answer(40, 50, right=False), "nope"], answer=["2"] * 4,
                        upper_budget=[50, 50, math.inf, 50], alpha=0.2, log_metric=logged.__setitem__)
    assert logged == {"selfbudgeter/alpha": 0.2, "selfbudgeter/tolerance": 6.0, "selfbudgeter/well_formed": 0.75, "selfbudgeter/correct": 0.5,
                      "selfbudgeter/within_budget": pytest.approx(2 / 3),
                      "selfbudgeter/over_upper_budget": pytest.approx(1 / 3)}


def test_parser_reports_malformed_outputs():
    assert parse_selfbudgeter("<budget>0</budget><solution>x</solution>").problem == "budget must be > 0"
    assert parse_selfbudgeter("<solution>x</solution>").problem == "no <budget>N</budget>"
    assert parse_selfbudgeter("<budget>9</budget> 3").problem == "no <solution>"
    assert parse_selfbudgeter("<budget>9</budget><solution>[[3]]</solution> extra").problem.startswith("text outside")
    assert parse_selfbudgeter("<budget> 12 </budget>\n<solution> so [[3]] </solution>\n").budget == 12


def test_l1_baseline():
    assert l1_reward(["w w [[2]]", "w w [[3]]"], answer=["2", "2"], target_length=[3, 3], lam=0.5) == [1.0, 0.0]
