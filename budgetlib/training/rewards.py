"""Budget-guided GRPO rewards for SelfBudgeter (Li et al., arXiv 2505.11274;
the authors released no code).

Notation, per completion: well-formed F (the output is
``<budget>b</budget><solution>…</solution>``), stated budget b, length L
(tokens when trl passes `completion_ids`, else whitespace words; the whole
completion, tags included — they add a few tokens, and the cold-start
budgets count them too), correct C, upper budget b_max, tolerance α.

THE PAPER'S STRUCTURE (as we read it):

- a malformed output gets a format penalty r_f, below every well-formed one;
- a well-formed answer gets a cosine length term around its stated budget:
  a correct answer scores highest at or below the budget, peaking at
  L = (1 − α)·b; a wrong answer has its own term, which rises with length
  toward (1 + α)·b (a wrong answer is penalised less for thinking more);
- a budget penalty, a constant r_b, when b > b_max, where b_max is the
  length of the model's own correct answer to this question, and infinity
  when the model never answered it correctly (then no penalty);
- the constants satisfy s^C_min + r_b ≥ s^W_max: a correct answer beats a
  wrong one even when its budget is penalised.

OUR EQUATIONS (exact shape, width and constants are OUR READING; the
structure above is the paper's):

    CosFn(t, T, η_min, η_max) = η_min + ½·(η_max − η_min)·(1 + cos(π · min(t / T, 1)))
        (the cosine length reward of Yeo et al., arXiv 2502.03373): η_max at
        t = 0, falling smoothly to η_min at t ≥ T

    correct (C = 1):  S = CosFn(|L − (1 − α)·b|, τ·b, s^C_min, s^C_max)   ∈ [0.5, 1.0]
    wrong   (C = 0):  S = CosFn(|L − (1 + α)·b|, τ·b, s^W_min, s^W_max)   ∈ [-1.0, -0.5]
    budget penalty:   P = r_b if b > b_max else 0                          (b_max = ∞: never)
    well-formed:      R = S + P
    malformed:        R = r_f

    s^C_max = 1.0, s^C_min = 0.5, s^W_max = -0.5, s^W_min = -1.0, r_b = -0.5, r_f = -2.0

so  s^C_min + r_b = 0.0 ≥ s^W_max = -0.5  and  r_f = -2 < s^W_min + r_b = -1.5.
Ranges: correct 0.5…1.0 (penalised 0.0…0.5), wrong -1.0…-0.5 (penalised
-1.5…-1.0), malformed -2; an honest correct answer (b ≤ b_max) never scores
below an inflated one. Also ours: r_b added to the length term (our reading of the
constraint above), for wrong answers too (it only lowers them); and, in
`selfbudgeter.grpo_prompts`, the shortest of several own correct cold-start
answers as b_max.

Two schedules, both linear in global_step / max_steps:

- the TOLERANCE τ, the cosine's width in units of the stated budget, anneals
  6.0 → 0.1: the only public description of the paper's α reports it as a
  tolerance annealed 6.0 → 0.1, wide early and tight late. With τ = 6 a
  correct answer within a budget of the peak scores nearly the maximum (b/2
  from it: 0.991, against 1.0 at the peak and 0.5 at the floor), so early
  training is hardly paid to write half its budget; with τ = 0.1, 10% of b from the peak
  already scores the floor. (OUR READING of that description.)
- the PEAK SHIFT α (this project's design card: correct answers peak at
  (1 − α)·b, wrong ones at (1 + α)·b, α in [0, 1)) anneals 0.5 → 0.1, so a
  correct answer ends just under its budget (0.9·b) by the time the
  tolerance is tight. A 6.0 → 0.1 schedule cannot be this α: (1 − α)·b
  would be a negative length. (OURS.)

Before `equations` v3 the width was fixed at b (τ = 1) and only α was
annealed: early training then paid a correct answer most at half its stated
budget, at full strength.

Guarantees (property-tested in tests/test_rewards.py): every correct answer,
penalised or not, scores ≥ every wrong one; a correct answer's score peaks
at L = (1 − α)·b and a wrong one's at (1 + α)·b; the budget penalty is
exactly r_b when b > b_max and zero when b_max = ∞; malformed < every
well-formed answer.

Each function takes ``(completions, **kwargs)`` as trl's GRPOTrainer calls
it: completions are strings or chat message lists, dataset columns arrive
as keyword lists. Nothing here swallows an exception.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..answers import extract_answer, is_correct

__all__ = ["SelfBudgeterOutput", "parse_selfbudgeter", "completion_text", "anneal_alpha", "format_reward",
           "accuracy_reward", "cos_fn", "length_term", "anneal_tolerance", "budget_penalty", "selfbudgeter_reward", "reward_function",
           "l1_reward", "RewardConfig", "DEFAULT_REWARD", "UPPER_BUDGET_RULES",
           "MALFORMED_REWARD", "S_C_MIN", "S_C_MAX", "S_W_MIN", "S_W_MAX", "BUDGET_PENALTY"]

def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1): the correct answers' peak (1 - alpha)*b is a length; got {alpha}")


#: how b_max (the upper budget) of a GRPO prompt is chosen from the cold-start answers (training.selfbudgeter)
UPPER_BUDGET_RULES = ("shortest_correct",)


@dataclass(frozen=True)
class RewardConfig:
    """Everything that decides SelfBudgeter's reward, carried in a GRPO run's `TrainConfig` (and so in its
    key): the constants, α's schedule, the b_max rule, and `equations`, the name of the reward's shape in this
    module. Any change to the equations must come with a new `equations` name, so that a finished run
    trained on the old reward is never reused (the constants alone would not say the shape changed).
    Defaults: the module docstring's values (OUR READING)."""

    s_c_min: float = 0.5  # correct answers' length term: s^C_min .. s^C_max
    s_c_max: float = 1.0
    s_w_min: float = -1.0  # wrong answers' length term: s^W_min .. s^W_max
    s_w_max: float = -0.5
    budget_penalty: float = -0.5  # r_b, added when the stated budget exceeds b_max
    malformed: float = -2.0  # r_f
    alpha_start: float = 0.5  # α (peak shift) anneals linearly alpha_start -> alpha_end over the run
    alpha_end: float = 0.1
    tolerance_start: float = 6.0  # τ (the cosine's width, in units of b) anneals tolerance_start -> tolerance_end
    tolerance_end: float = 0.1
    upper_budget: str = "shortest_correct"  # b_max: the shortest own correct cold-start answer, ∞ when none
    equations: str = "cos-peak-(1-a)b/(1+a)b,width-tau*b,v3"

    def __post_init__(self):
        for name in ("s_c_min", "s_c_max", "s_w_min", "s_w_max", "budget_penalty", "malformed", "alpha_start",
                     "alpha_end", "tolerance_start", "tolerance_end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"reward.{name} must be a number, got {value!r}")
        if not (self.s_w_min < self.s_w_max and self.s_c_min < self.s_c_max):
            raise ValueError(f"reward: need s_w_min < s_w_max and s_c_min < s_c_max, got {self}")
        if self.s_c_min + self.budget_penalty < self.s_w_max:
            raise ValueError("reward: the paper's constraint s_c_min + budget_penalty >= s_w_max does not hold "
                             f"({self.s_c_min} + {self.budget_penalty} < {self.s_w_max})")
        if not self.malformed < self.s_w_min + min(self.budget_penalty, 0.0):
            raise ValueError(f"reward.malformed ({self.malformed}) must lie below every well-formed reward")
        for name in ("alpha_start", "alpha_end"):
            _check_alpha(getattr(self, name))
        for name in ("tolerance_start", "tolerance_end"):
            if not getattr(self, name) > 0:
                raise ValueError(f"reward.{name} must be > 0 (the cosine's width in units of b), got {getattr(self, name)}")
        if self.upper_budget not in UPPER_BUDGET_RULES:
            raise ValueError(f"reward.upper_budget must be one of {UPPER_BUDGET_RULES}, got {self.upper_budget!r}")


DEFAULT_REWARD = RewardConfig()
# The default constants under their docstring names (the paper's constraint: S_C_MIN + BUDGET_PENALTY >= S_W_MAX).
S_C_MIN, S_C_MAX = DEFAULT_REWARD.s_c_min, DEFAULT_REWARD.s_c_max
S_W_MIN, S_W_MAX = DEFAULT_REWARD.s_w_min, DEFAULT_REWARD.s_w_max
BUDGET_PENALTY = DEFAULT_REWARD.budget_penalty
MALFORMED_REWARD = DEFAULT_REWARD.malformed
ALPHA_START, ALPHA_END = DEFAULT_REWARD.alpha_start, DEFAULT_REWARD.alpha_end
TOLERANCE_START, TOLERANCE_END = DEFAULT_REWARD.tolerance_start, DEFAULT_REWARD.tolerance_end
_FORMAT = re.compile(r"^\s*<budget>\s*(\d+)\s*</budget>\s*<solution>(.*?)</solution>\s*$", re.DOTALL)


@dataclass(frozen=True)
class SelfBudgeterOutput:
    budget: int | None
    solution: str | None
    answer: str | None
    well_formed: bool
    problem: str | None = None  # why it is malformed


def parse_selfbudgeter(text: str) -> SelfBudgeterOutput:
    """Parse ``<budget>N</budget><solution>…</solution>``.

    >>> parse_selfbudgeter("<budget>40</budget><solution>3 + 4 = 7. [[7]]</solution>")
    SelfBudgeterOutput(budget=40, solution='3 + 4 = 7. [[7]]', answer='7', well_formed=True, problem=None)
    >>> parse_selfbudgeter("<budget>40</budget><solution>3 + 4 = 7").problem
    'no closing </solution> (truncated?)'
    >>> parse_selfbudgeter("The answer is 7").well_formed
    False
    """
    m = _FORMAT.match(text or "")
    if m:
        budget = int(m.group(1))
        if budget <= 0:
            return SelfBudgeterOutput(None, m.group(2), extract_answer(m.group(2)), False, "budget must be > 0")
        return SelfBudgeterOutput(budget, m.group(2).strip(), extract_answer(m.group(2)), True)
    b = re.search(r"<budget>\s*(\d+)\s*</budget>", text or "")
    s = re.search(r"<solution>(.*)", text or "", re.DOTALL)
    solution = s.group(1) if s else None
    if b is None:
        problem = "no <budget>N</budget>"
    elif s is None:
        problem = "no <solution>"
    elif "</solution>" not in s.group(1):
        problem = "no closing </solution> (truncated?)"
    else:
        problem = "text outside <budget>…</budget><solution>…</solution>"
    return SelfBudgeterOutput(int(b.group(1)) if b else None, solution,
                              extract_answer(solution) if solution else None, False, problem)


def completion_text(completion: Any) -> str:
    """A trl completion as text: a string, or a list of chat messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and all(isinstance(m, dict) and "content" in m for m in completion):
        return "".join(str(m["content"]) for m in completion)
    raise TypeError(f"a completion must be a string or a list of chat messages, got {type(completion).__name__}")


def _progress(trainer_state: Any) -> float | None:
    if trainer_state is None or not getattr(trainer_state, "max_steps", 0):
        return None
    return min(max(trainer_state.global_step / trainer_state.max_steps, 0.0), 1.0)


def anneal_alpha(trainer_state: Any = None, reward: RewardConfig = DEFAULT_REWARD) -> float:
    """α (the peak shift) from training progress (linear, `reward.alpha_start` → `alpha_end`: 0.5 → 0.1
    by default); `alpha_start` without a state.

    >>> class S: global_step, max_steps = 5, 10
    >>> round(anneal_alpha(S()), 2)
    0.3
    """
    progress = _progress(trainer_state)
    if progress is None:
        return reward.alpha_start
    return reward.alpha_start + (reward.alpha_end - reward.alpha_start) * progress


def anneal_tolerance(trainer_state: Any = None, reward: RewardConfig = DEFAULT_REWARD) -> float:
    """τ (the cosine's width in units of b) from training progress (linear, `reward.tolerance_start` →
    `tolerance_end`: 6.0 → 0.1 by default); `tolerance_start` without a state.

    >>> class S: global_step, max_steps = 5, 10
    >>> round(anneal_tolerance(S()), 2), anneal_tolerance()
    (3.05, 6.0)
    """
    progress = _progress(trainer_state)
    if progress is None:
        return reward.tolerance_start
    return reward.tolerance_start + (reward.tolerance_end - reward.tolerance_start) * progress


def cos_fn(t: float, width: float, low: float, high: float) -> float:
    """CosFn(t, T, η_min, η_max) = η_min + ½(η_max − η_min)(1 + cos(π·min(t/T, 1))):
    `high` at t = 0, `low` from t = T on.

    >>> cos_fn(0, 10, 0.5, 1.0), cos_fn(5, 10, 0.5, 1.0), cos_fn(10, 10, 0.5, 1.0), cos_fn(99, 10, 0.5, 1.0)
    (1.0, 0.75, 0.5, 0.5)
    """
    if width <= 0 or t < 0:
        raise ValueError(f"need width > 0 and t >= 0, got {width}, {t}")
    return low + 0.5 * (high - low) * (1.0 + math.cos(math.pi * min(t / width, 1.0)))


def length_term(length: int, budget: int, alpha: float, correct: bool, reward: RewardConfig = DEFAULT_REWARD,
                tolerance: float = 1.0) -> float:
    """S of the module docstring: for a correct answer CosFn(|L − (1−α)b|, τb,
    0.5, 1.0), peaking at L = (1−α)·b; for a wrong one CosFn(|L − (1+α)b|, τb,
    -1.0, -0.5), peaking at L = (1+α)·b; τ = `tolerance`.

    >>> length_term(90, 100, 0.1, True), length_term(190, 100, 0.1, True), round(length_term(100, 100, 0.1, True), 3)
    (1.0, 0.5, 0.988)
    >>> length_term(110, 100, 0.1, False), length_term(10, 100, 0.1, False), length_term(60, 100, 0.1, False)
    (-0.5, -1.0, -0.75)
    >>> round(length_term(100, 100, 0.5, True, tolerance=6.0), 3), length_term(100, 100, 0.1, True, tolerance=0.1)
    (0.991, 0.5)
    """
    if budget <= 0 or tolerance <= 0:
        raise ValueError(f"need budget > 0 and tolerance > 0, got {budget}, {tolerance}")
    _check_alpha(alpha)
    width = tolerance * budget
    if correct:
        return round(cos_fn(abs(length - (1.0 - alpha) * budget), width, reward.s_c_min, reward.s_c_max), 12)
    return round(cos_fn(abs(length - (1.0 + alpha) * budget), width, reward.s_w_min, reward.s_w_max), 12)


def budget_penalty(budget: int, upper_budget: float | None, reward: RewardConfig = DEFAULT_REWARD) -> float:
    """P = r_b (-0.5) when the stated budget exceeds b_max, else 0; b_max
    None or infinity (the model never answered the question correctly) never
    penalises.

    >>> budget_penalty(60, 50), budget_penalty(50, 50), budget_penalty(10**6, math.inf), budget_penalty(9, None)
    (-0.5, 0.0, 0.0, 0.0)
    """
    if upper_budget is None or math.isinf(upper_budget):
        return 0.0
    return reward.budget_penalty if budget > upper_budget else 0.0


def _lengths(texts: Sequence[str], completion_ids: Sequence[Sequence[int]] | None) -> list[int]:
    if completion_ids is not None:
        if len(completion_ids) != len(texts):
            raise ValueError(f"{len(completion_ids)} completion_ids for {len(texts)} completions")
        return [len(ids) for ids in completion_ids]
    return [len(t.split()) for t in texts]


def format_reward(completions: Sequence[Any], **kwargs) -> list[float]:
    """1 for a well-formed answer, `MALFORMED_REWARD` otherwise.

    >>> format_reward(["<budget>5</budget><solution>[[2]]</solution>", "[[2]]"])
    [1.0, -2.0]
    """
    return [1.0 if parse_selfbudgeter(completion_text(c)).well_formed else MALFORMED_REWARD for c in completions]


def accuracy_reward(completions: Sequence[Any], answer: Sequence[str], **kwargs) -> list[float]:
    """1 when the solution's final answer matches `answer`, else 0.

    >>> accuracy_reward(["<budget>5</budget><solution>so [[4]]</solution>"] * 2, answer=["4", "5"])
    [1.0, 0.0]
    """
    out = []
    for c, gold in zip(completions, answer, strict=True):
        parsed = parse_selfbudgeter(completion_text(c))
        out.append(1.0 if is_correct(parsed.answer, gold) else 0.0)
    return out


def selfbudgeter_reward(completions: Sequence[Any], answer: Sequence[str], upper_budget: Sequence[float | None],
                        alpha: float | None = None, trainer_state: Any = None, tolerance: float | None = None,
                        completion_ids: Sequence[Sequence[int]] | None = None,
                        log_metric: Callable[[str, float], None] | None = None,
                        reward: RewardConfig = DEFAULT_REWARD, **kwargs) -> list[float]:
    """The combined reward of the module docstring, R = S + P (or r_f), with `reward`'s constants.
    `upper_budget` is b_max per completion (None or ``math.inf``: never
    answered correctly, no budget penalty). With `log_metric` (trl passes
    one) it also logs, per batch, α, τ and the shares of well-formed, correct,
    within-budget and over-b_max completions as ``selfbudgeter/...``.

    >>> good = "<budget>5</budget><solution>1 + 1 = [[2]]</solution>"  # 5 words
    >>> bad = "<budget>5</budget><solution>1 + 1 = [[3]]</solution>"
    >>> selfbudgeter_reward([good, bad, "[[2]]"], answer=["2"] * 3, upper_budget=[50] * 3, alpha=0.0, tolerance=1.0)
    [1.0, -0.5, -2.0]
    >>> selfbudgeter_reward([good, bad], answer=["2"] * 2, upper_budget=[4, math.inf], alpha=0.0)  # 5 > b_max = 4
    [0.5, -0.5]
    >>> logged = {}
    >>> _ = selfbudgeter_reward([good, bad], answer=["2"] * 2, upper_budget=[50] * 2, alpha=0.5,
    ...                         log_metric=logged.__setitem__)
    >>> logged["selfbudgeter/correct"], logged["selfbudgeter/within_budget"], logged["selfbudgeter/over_upper_budget"]
    (0.5, 1.0, 0.0)
    """
    alpha = anneal_alpha(trainer_state, reward) if alpha is None else alpha
    tolerance = anneal_tolerance(trainer_state, reward) if tolerance is None else tolerance
    _check_alpha(alpha)
    texts = [completion_text(c) for c in completions]
    lengths = _lengths(texts, completion_ids)
    rewards, formed, correct, within, over = [], 0, 0, 0, 0
    for text, length, gold, upper in zip(texts, lengths, answer, upper_budget, strict=True):
        parsed = parse_selfbudgeter(text)
        if not parsed.well_formed:
            rewards.append(reward.malformed)
            continue
        formed += 1
        within += length <= parsed.budget
        penalty = budget_penalty(parsed.budget, upper, reward)
        over += penalty != 0.0
        right = is_correct(parsed.answer, gold)
        correct += right
        rewards.append(length_term(length, parsed.budget, alpha, right, reward, tolerance) + penalty)
    if log_metric is not None and texts:
        log_metric("selfbudgeter/alpha", alpha)
        log_metric("selfbudgeter/tolerance", tolerance)
        log_metric("selfbudgeter/well_formed", formed / len(texts))
        log_metric("selfbudgeter/correct", correct / len(texts))
        log_metric("selfbudgeter/within_budget", within / formed if formed else 0.0)
        log_metric("selfbudgeter/over_upper_budget", over / formed if formed else 0.0)
    return rewards


def reward_function(reward: RewardConfig = DEFAULT_REWARD) -> Callable[..., list[float]]:
    """`selfbudgeter_reward` bound to `reward`, named as trl logs it (``rewards/selfbudgeter_reward/...``).

    >>> f = reward_function(RewardConfig(malformed=-3.0))
    >>> f.__name__, f(["[[2]]"], answer=["2"], upper_budget=[None])
    ('selfbudgeter_reward', [-3.0])
    """
    def selfbudgeter_reward_(completions, **kwargs):
        return selfbudgeter_reward(completions, reward=reward, **kwargs)

    selfbudgeter_reward_.__name__ = selfbudgeter_reward_.__qualname__ = "selfbudgeter_reward"
    return selfbudgeter_reward_


def l1_reward(completions: Sequence[Any], answer: Sequence[str], target_length: Sequence[int], lam: float = 0.003,
              completion_ids: Sequence[Sequence[int]] | None = None, **kwargs) -> list[float]:
    """The L1 / LCPO baseline: correct − λ·|target − length| (any format).

    >>> l1_reward(["a b c [[2]]"], answer=["2"], target_length=[14], lam=0.1)
    [0.0]
    """
    texts = [completion_text(c) for c in completions]
    lengths = _lengths(texts, completion_ids)
    return [(1.0 if is_correct(extract_answer(t), gold) else 0.0) - lam * abs(target - n)
            for t, n, gold, target in zip(texts, lengths, answer, target_length, strict=True)]
