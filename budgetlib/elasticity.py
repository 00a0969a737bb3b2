"""Token elasticity: how real output length responds to the stated budget.

`budget_sweep` asks every problem at every budget (batched) and returns a
tidy frame; `sweep_summary` aggregates it per budget; `elastic_budgets`
finds, per question, the budget at which output was shortest — below it,
TALE observed, output grows again as the model stops following the budget.
"""

from __future__ import annotations

from typing import Sequence

from .answers import extract_answer, is_correct
from .backends.base import Backend, generate_in_batches
from .data import Problem, check_problems
from .prompts import BUDGETED_COT, VANILLA_COT

__all__ = ["budget_sweep", "sweep_run", "sweep_summary", "elastic_budgets"]


def budget_sweep(backend: Backend, problems: Sequence[Problem], budgets: Sequence[int], *,
                 max_new_tokens: int, batch_size: int | None = None):
    """A pandas frame with one row per (problem, budget): id, budget,
    output_tokens, correct, within_budget, finish_reason, plus the problem's
    vanilla_tokens and vanilla_correct (one batched vanilla pass)."""
    import pandas as pd

    check_problems(problems, "sweep")
    budgets = list(budgets)
    bad = [b for b in budgets if isinstance(b, bool) or not isinstance(b, int) or b <= 0]
    if bad or not budgets:
        raise ValueError(f"budgets must be positive integers, got {budgets!r}")
    vanilla = generate_in_batches(backend, [VANILLA_COT.render(p.question) for p in problems],
                                  max_new_tokens=max_new_tokens, batch_size=batch_size)
    pairs = [(p, b) for b in budgets for p in problems]
    gens = generate_in_batches(backend, [BUDGETED_COT.render(p.question, b) for p, b in pairs],
                               max_new_tokens=max_new_tokens, batch_size=batch_size)
    base = {p.id: (v.n_output_tokens, is_correct(extract_answer(v.text), p.answer))
            for p, v in zip(problems, vanilla)}
    rows = [{"id": p.id, "budget": b, "output_tokens": g.n_output_tokens,
             "correct": is_correct(extract_answer(g.text), p.answer), "within_budget": g.n_output_tokens <= b,
             "finish_reason": g.finish_reason, "vanilla_tokens": base[p.id][0], "vanilla_correct": base[p.id][1]}
            for (p, b), g in zip(pairs, gens)]
    return pd.DataFrame(rows)


def sweep_summary(frame):
    """Per budget: mean and median output tokens, accuracy, share within budget."""
    return (frame.groupby("budget")
            .agg(mean_output_tokens=("output_tokens", "mean"), median_output_tokens=("output_tokens", "median"),
                 accuracy=("correct", "mean"), within_budget=("within_budget", "mean"), n=("id", "size"))
            .reset_index())


def elastic_budgets(frame):
    """Per question: the budget with the fewest output tokens (the largest
    such budget on ties) and whether any smaller budget produced more tokens
    than that minimum, i.e. whether the question shows token elasticity."""
    import pandas as pd

    rows = []
    for pid, g in frame.sort_values("budget").groupby("id", sort=False):
        fewest = g["output_tokens"].min()
        at = g.loc[g["output_tokens"] == fewest, "budget"].max()
        below = g[g["budget"] < at]
        rows.append({"id": pid, "elastic_budget": int(at), "min_output_tokens": int(fewest),
                     "elastic": bool((below["output_tokens"] > fewest).any())})
    return pd.DataFrame(rows)


def sweep_run(backend: Backend, problems: Sequence[Problem], budgets: Sequence[int], *, max_new_tokens: int,
              dataset: str, profile: str, batch_size: int | None = None, step: str = "03_token_elasticity",
              root=None):
    """`budget_sweep` stored in a run directory found by a hash of its
    config: computed once, read back afterwards. Returns (frame, run)."""
    import pandas as pd

    from .runs import run_metadata, start_run

    identity = backend.identity()
    config = {"budgets": list(budgets), "max_new_tokens": max_new_tokens, "backend": identity,
              "dataset": dataset, "ids": [p.id for p in problems],
              "templates": [VANILLA_COT.text, BUDGETED_COT.text]}
    meta = run_metadata(identity, dataset=dataset, n=len(problems), profile=profile)
    run = start_run(step, config, metadata=meta, root=root)
    if run.finished:
        return pd.DataFrame(run.items()), run
    frame = budget_sweep(backend, problems, budgets, max_new_tokens=max_new_tokens, batch_size=batch_size)
    run.clear_items()  # an interrupted earlier attempt may have left a partial write
    run.append(frame.to_dict("records"))
    run.finish({"per_budget": sweep_summary(frame).to_dict("records")})
    return frame, run
