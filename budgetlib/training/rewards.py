"""Budget-guided GRPO rewards for SelfBudgeter — our reading of the paper's
description (arXiv 2505.11274; the authors released no code).

Notation, per completion: well-formed F (the output is
``<budget>b</budget><solution>…</solution>``), stated budget b, solution
completion length L (tokens when trl passes `completion_ids`, else
whitespace words; the whole completion, tags included — they add a few
tokens), correct C, upper budget U (the length of the model's
own correct answer to this question; the generation cap when it has none),
tolerance α.

    malformed:           R = -2
    length term:         S = cos(π/2 · min(|L − b| / (α·b), 1))        ∈ [0, 1]
    over-budget penalty: P = 0.5 · min((b − U) / U, 1)  if b > U, else 0  ∈ [0, 0.5]
    correct:             R = 1 + S − P                                   ∈ [0.5, 2]
    wrong:               R = -1 − P                                      ∈ [-1.5, -1]

α anneals linearly from 6.0 (loose) to 0.1 (tight) over training:
α = 6.0 + (0.1 − 6.0) · global_step / max_steps.

Guarantees (property-tested): every correct answer (≥ 0.5) beats every wrong
one (≤ -1), which beats every malformed one (-2); for a correct answer,
L = b scores highest; at any α a correct answer far over budget still
scores ≥ 0.5 > wrong; stating a budget above U scores below the same answer
with an honest budget (P > 0 only when b > U).

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
           "accuracy_reward", "length_score", "selfbudgeter_reward", "l1_reward", "MALFORMED_REWARD"]

MALFORMED_REWARD = -2.0
ALPHA_START, ALPHA_END = 6.0, 0.1
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


def anneal_alpha(trainer_state: Any = None) -> float:
    """α from training progress (linear, 6.0 → 0.1); 6.0 without a state.

    >>> class S: global_step, max_steps = 5, 10
    >>> round(anneal_alpha(S()), 2)
    3.05
    """
    if trainer_state is None or not getattr(trainer_state, "max_steps", 0):
        return ALPHA_START
    progress = min(max(trainer_state.global_step / trainer_state.max_steps, 0.0), 1.0)
    return ALPHA_START + (ALPHA_END - ALPHA_START) * progress


def length_score(length: int, budget: int, alpha: float) -> float:
    """S = cos(π/2 · min(|L − b| / (α·b), 1)): 1 at L = b, 0 beyond α·b away.

    >>> length_score(100, 100, 0.1), length_score(400, 100, 0.1), round(length_score(105, 100, 0.1), 3)
    (1.0, 0.0, 0.707)
    """
    if budget <= 0 or alpha <= 0:
        raise ValueError(f"need budget > 0 and alpha > 0, got {budget}, {alpha}")
    distance = abs(length - budget) / (alpha * budget)
    return 0.0 if distance >= 1.0 else math.cos(math.pi / 2 * distance)


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


def selfbudgeter_reward(completions: Sequence[Any], answer: Sequence[str], upper_budget: Sequence[int],
                        alpha: float | None = None, trainer_state: Any = None,
                        completion_ids: Sequence[Sequence[int]] | None = None,
                        log_metric: Callable[[str, float], None] | None = None, **kwargs) -> list[float]:
    """The combined reward of the module docstring. With `log_metric` (trl
    passes one) it also logs, per batch, α and the shares of well-formed,
    correct and within-budget completions as ``selfbudgeter/...``.

    >>> good = "<budget>5</budget><solution>1 + 1 = [[2]]</solution>"  # 5 words
    >>> bad = "<budget>5</budget><solution>1 + 1 = [[3]]</solution>"
    >>> selfbudgeter_reward([good, bad, "[[2]]"], answer=["2"] * 3, upper_budget=[50] * 3, alpha=0.1)
    [2.0, -1.0, -2.0]
    >>> logged = {}
    >>> _ = selfbudgeter_reward([good, bad], answer=["2"] * 2, upper_budget=[50] * 2, alpha=1.0,
    ...                         log_metric=logged.__setitem__)
    >>> logged["selfbudgeter/correct"], logged["selfbudgeter/within_budget"]
    (0.5, 1.0)
    """
    alpha = anneal_alpha(trainer_state) if alpha is None else alpha
    texts = [completion_text(c) for c in completions]
    lengths = _lengths(texts, completion_ids)
    rewards, formed, correct, within = [], 0, 0, 0
    for text, length, gold, upper in zip(texts, lengths, answer, upper_budget, strict=True):
        parsed = parse_selfbudgeter(text)
        if not parsed.well_formed:
            rewards.append(MALFORMED_REWARD)
            continue
        formed += 1
        within += length <= parsed.budget
        penalty = 0.5 * min((parsed.budget - upper) / upper, 1.0) if parsed.budget > upper else 0.0
        if is_correct(parsed.answer, gold):
            correct += 1
            rewards.append(1.0 + length_score(length, parsed.budget, alpha) - penalty)
        else:
            rewards.append(-1.0 - penalty)
    if log_metric is not None and texts:
        log_metric("selfbudgeter/alpha", alpha)
        log_metric("selfbudgeter/well_formed", formed / len(texts))
        log_metric("selfbudgeter/correct", correct / len(texts))
        log_metric("selfbudgeter/within_budget", within / formed if formed else 0.0)
    return rewards


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
