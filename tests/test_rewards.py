import pytest

from budgetlib.training.rewards import (MALFORMED_REWARD, anneal_alpha, format_reward, l1_reward,
                                        parse_selfbudgeter, selfbudgeter_reward)


def answer(budget, words, right=True):
    """A well-formed completion of exactly `words` whitespace words."""
    body = " ".join(["w"] * (words - 1))  # the first w shares a word with the tags
    return f"<budget>{budget}</budget><solution>{body} [[{2 if right else 3}]]</solution>"


def reward(completion, alpha, upper=1000, ids=None):
    return selfbudgeter_reward([completion], answer=["2"], upper_budget=[upper], alpha=alpha,
                               completion_ids=ids)[0]


@pytest.mark.parametrize("alpha", [0.1, 0.5, 1.0, 3.0, 6.0])
def test_ordering_at_any_alpha(alpha):
    on_budget, far_over, wrong = reward(answer(40, 40), alpha), reward(answer(40, 400), alpha), \
        reward(answer(40, 40, right=False), alpha)
    malformed = reward("[[2]] no tags", alpha)
    assert on_budget >= far_over > wrong > malformed == MALFORMED_REWARD


def test_tight_alpha_prefers_within_budget_over_4x():
    assert reward(answer(40, 39), 0.1) > reward(answer(40, 160), 0.1) > reward(answer(40, 40, right=False), 0.1)


def test_over_stated_budget_is_penalised():
    honest, inflated = reward(answer(40, 40), 6.0, upper=50), reward(answer(400, 40), 6.0, upper=50)
    assert honest > inflated
    # but a correct inflated answer still beats any wrong one
    assert inflated > reward(answer(40, 40, right=False), 6.0, upper=50)
    assert reward(answer(400, 40, right=False), 6.0, upper=50) < reward(answer(40, 40, right=False), 6.0, upper=50)


def test_any_correct_beats_any_wrong_exhaustively():
    corrects = [reward(answer(b, n), a, upper=u) for b in (5, 50, 500) for n in (3, 50, 900)
                for a in (0.1, 6.0) for u in (4, 60)]
    wrongs = [reward(answer(b, n, right=False), a, upper=u) for b in (5, 50, 500) for n in (3, 50, 900)
              for a in (0.1, 6.0) for u in (4, 60)]
    assert min(corrects) > max(wrongs) > MALFORMED_REWARD


def test_chat_message_completions_and_token_ids():
    msg = [[{"role": "assistant", "content": answer(10, 10)}]]
    assert selfbudgeter_reward(msg, answer=["2"], upper_budget=[99], alpha=0.1) == [2.0]
    # with completion_ids the length is the token count: 20 tokens against a budget of 10 at α 0.1 -> S = 0
    assert selfbudgeter_reward(msg, answer=["2"], upper_budget=[99], alpha=0.1, completion_ids=[[0] * 20]) == [1.0]
    with pytest.raises(TypeError, match="chat messages"):
        format_reward([42])
    with pytest.raises(ValueError):
        selfbudgeter_reward(msg, answer=["2", "3"], upper_budget=[99])


def test_alpha_anneals_from_trainer_state():
    class State:
        def __init__(self, step):
            self.global_step, self.max_steps = step, 100

    assert anneal_alpha(State(0)) == 6.0 and anneal_alpha(State(100)) == pytest.approx(0.1)
    comp = [answer(40, 44)]
    early = selfbudgeter_reward(comp, answer=["2"], upper_budget=[99], trainer_state=State(0))[0]
    late = selfbudgeter_reward(comp, answer=["2"], upper_budget=[99], trainer_state=State(100))[0]
    assert early > late  # 10% over budget: fine when loose, penalised when tight


def test_parser_reports_malformed_outputs():
    assert parse_selfbudgeter("<budget>0</budget><solution>x</solution>").problem == "budget must be > 0"
    assert parse_selfbudgeter("<solution>x</solution>").problem == "no <budget>N</budget>"
    assert parse_selfbudgeter("<budget>9</budget> 3").problem == "no <solution>"
    assert parse_selfbudgeter("<budget>9</budget><solution>[[3]]</solution> extra").problem.startswith("text outside")
    assert parse_selfbudgeter("<budget> 12 </budget>\n<solution> so [[3]] </solution>\n").budget == 12


def test_l1_baseline():
    assert l1_reward(["w w [[2]]", "w w [[3]]"], answer=["2", "2"], target_length=[3, 3], lam=0.5) == [1.0, 0.0]
