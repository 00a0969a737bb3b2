"""Token elasticity: how real output length responds to the stated budget.

`budget_sweep` asks every problem at every budget (batched) and returns a
tidy frame; `sweep_summary` aggregates it per budget; `elastic_budgets`
finds, per question, the budget at which output was shortest — below it,
TALE observed, output grows again as the model stops following the budget.
`ladder_sweep` sweeps each question's own halving ladder β0, β0/2, ... (β0 =
its vanilla length) in one call.

One question's budgeted prompts differ only in the budget number near the
end, so the sweeps send them question by question and, with
``shared_prefix`` on (the default: measured faster, see
benchmarks/shared_prefix.py), a backend that supports it (`HFBackend`)
encodes each question's common prompt prefix once per batch. Other backends
ignore the switch.
"""

from __future__ import annotations

from typing import Sequence

from .answers import extract_answer, is_correct
from .backends.base import Backend, Generation, generate_in_batches
from .backends.prefix_cache import prefix_sharing
from .data import Problem, check_problems, problems_digest
from .prompts import BUDGETED_COT, VANILLA_COT, PromptTemplate
from .search import halving_ladder

__all__ = ["budget_sweep", "ladder_sweep", "ladder_requests", "sweep_run", "sweep_summary", "elastic_budgets",
           "SHARED_PREFIX_DEFAULT"]

SHARED_PREFIX_DEFAULT = True  # for the sweeps' budgeted calls when shared_prefix=None


def _vanilla(backend: Backend, problems: Sequence[Problem], max_new_tokens: int,
             batch_size: int | None) -> list[Generation]:
    return generate_in_batches(backend, [VANILLA_COT.render(p.question) for p in problems],
                               max_new_tokens=max_new_tokens, batch_size=batch_size)


def _budgeted(backend: Backend, pairs: Sequence[tuple[Problem, int]], max_new_tokens: int,
              batch_size: int | None, shared_prefix: bool | None,
              template: PromptTemplate = BUDGETED_COT) -> list[Generation]:
    """One generation per (problem, budget) pair, in the pairs' order, with
    prefix sharing switched as asked (None: `SHARED_PREFIX_DEFAULT`)."""
    with prefix_sharing(backend, SHARED_PREFIX_DEFAULT if shared_prefix is None else shared_prefix):
        return generate_in_batches(backend, [template.render(p.question, b) for p, b in pairs],
                                   max_new_tokens=max_new_tokens, batch_size=batch_size)


def _row(p: Problem, b: int, g: Generation, vanilla: Generation) -> dict:
    return {"id": p.id, "budget": b, "output_tokens": g.n_output_tokens,
            "correct": is_correct(extract_answer(g.text), p.answer), "within_budget": g.n_output_tokens <= b,
            "finish_reason": g.finish_reason, "vanilla_tokens": vanilla.n_output_tokens,
            "vanilla_correct": is_correct(extract_answer(vanilla.text), p.answer)}


def budget_sweep(backend: Backend, problems: Sequence[Problem], budgets: Sequence[int], *,
                 max_new_tokens: int, batch_size: int | None = None, shared_prefix: bool | None = None,
                 template: PromptTemplate = BUDGETED_COT):
    """A pandas frame with one row per (problem, budget), budget by budget:
    id, budget, output_tokens, correct, within_budget, finish_reason, plus the
    problem's vanilla_tokens and vanilla_correct (one batched vanilla pass).
    The budgeted prompts (`template`: TALE's wording by default, or another of
    `prompts.BUDGET_WORDINGS`) are sent question by question (module docstring)."""
    if not template.needs_budget:
        raise ValueError(f"template {template.name!r} has no {{budget}} field")
    import pandas as pd

    check_problems(problems, "sweep")
    budgets = list(budgets)
    bad = [b for b in budgets if isinstance(b, bool) or not isinstance(b, int) or b <= 0]
    if bad or not budgets:
        raise ValueError(f"budgets must be positive integers, got {budgets!r}")
    pairs = [(p, b) for p in problems for b in budgets]
    vanilla = _vanilla(backend, problems, max_new_tokens, batch_size)
    gens = _budgeted(backend, pairs, max_new_tokens, batch_size, shared_prefix, template)
    k = len(budgets)
    rows = [_row(p, b, gens[i * k + j], vanilla[i]) for j, b in enumerate(budgets) for i, p in enumerate(problems)]
    return pd.DataFrame(rows)


def ladder_requests(problems: Sequence[Problem], starts: Sequence[int], *, floor: int = 1
                    ) -> list[tuple[Problem, int]]:
    """(problem, budget) for each budget of each problem's halving ladder
    from its start (`starts[i]` for `problems[i]`; see
    `budgetlib.search.halving_ladder`), question by question, so one
    question's candidates sit side by side in a batch and share a prefix."""
    if len(starts) != len(problems):
        raise ValueError(f"got {len(starts)} ladder starts for {len(problems)} problems")
    return [(p, b) for p, start in zip(problems, starts) for b in halving_ladder(start, floor)]


def ladder_sweep(backend: Backend, problems: Sequence[Problem], *, max_new_tokens: int, floor: int = 1,
                 batch_size: int | None = None, shared_prefix: bool | None = None):
    """Each question at every rung of its own halving ladder β0, ⌊β0/2⌋, ...
    ≥ `floor`, where β0 is its vanilla-CoT output length (TALE's search
    start): one vanilla pass, then all rungs of all questions in one call.
    The frame has `budget_sweep`'s columns plus ``rung`` (0 for β0), question
    by question; a question whose vanilla answer is shorter than `floor`
    has no rows."""
    import pandas as pd

    check_problems(problems, "sweep")
    vanilla = _vanilla(backend, problems, max_new_tokens, batch_size)
    pairs = ladder_requests(problems, [v.n_output_tokens for v in vanilla], floor=floor)
    gens = _budgeted(backend, pairs, max_new_tokens, batch_size, shared_prefix)
    by_id = {p.id: v for p, v in zip(problems, vanilla)}
    rows, rung, last = [], 0, None
    for (p, b), g in zip(pairs, gens):
        rung = rung + 1 if p.id == last else 0
        last = p.id
        rows.append({**_row(p, b, g, by_id[p.id]), "rung": rung})
    columns = ["id", "budget", "output_tokens", "correct", "within_budget", "finish_reason", "vanilla_tokens",
               "vanilla_correct", "rung"]
    return pd.DataFrame(rows, columns=columns)


def sweep_summary(frame):
    """Per budget: mean and median output tokens, accuracy, share within budget, share cut at the cap."""
    return (frame.assign(truncated=frame["finish_reason"] == "length").groupby("budget")
            .agg(mean_output_tokens=("output_tokens", "mean"), median_output_tokens=("output_tokens", "median"),
                 accuracy=("correct", "mean"), within_budget=("within_budget", "mean"),
                 truncated_rate=("truncated", "mean"), n=("id", "size"))
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
              root=None, shared_prefix: bool | None = None, template: PromptTemplate = BUDGETED_COT,
              label: str | None = None):
    """`budget_sweep` stored in a run (`runs.reuse`) keyed by its config:
    computed once, read back afterwards; a killed sweep replays the answers
    it had got (`Run.keep_answers`). `shared_prefix` is an execution
    detail (not in the key). The run records `label` (default "budget sweep
    (<template>)"). Returns (frame, run)."""
    import pandas as pd

    from .runs import reuse

    identity = backend.identity()
    config = {"budgets": list(budgets), "max_new_tokens": max_new_tokens, "backend": identity,
              "dataset": dataset, "ids": [p.id for p in problems], "data_sha256": problems_digest(problems),
              "templates": [VANILLA_COT.text, template.text]}

    def compute(run):
        frame = budget_sweep(run.keep_answers(backend), problems, budgets, max_new_tokens=max_new_tokens, batch_size=batch_size,
                             shared_prefix=shared_prefix, template=template)
        run.clear_items()  # an interrupted earlier attempt may have left a partial write
        run.append(frame.to_dict("records"))
        run.finish({"per_budget": sweep_summary(frame).to_dict("records")})
        return frame

    label = label or f"budget sweep ({template.name})"
    return reuse(step, config, compute, lambda run: pd.DataFrame(run.items()), label=label, kind="sweep",
                 dataset=dataset, profile=profile, identity=identity, problems=problems, root=root)
