"""Run a prompt method over problems: per-item rows and a summary.

One judge for everything: `answers.extract_answer` + `answers.is_correct`.
With a run directory (`budgetlib.runs`), items are appended as each chunk
finishes and a rerun skips the ids already there, so a killed run resumes.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Sequence

from .answers import extract_answer, is_correct
from .backends.base import Backend, generate_in_batches
from .data import Problem, check_problems
from .prompts import BUDGETED_COT, DIRECT, VANILLA_COT, PromptTemplate
from .runs import Run, run_metadata, start_run

__all__ = ["Method", "Evaluation", "evaluate", "evaluate_run", "compare_methods", "summarize", "wilson_interval",
           "DIRECT_ANSWER", "VANILLA", "budgeted"]


@dataclass(frozen=True)
class Method:
    """A prompting method: a template and, for budgeted CoT, the stated budget."""

    name: str
    template: PromptTemplate
    budget: int | None = None

    def __post_init__(self):
        if self.template.needs_budget != (self.budget is not None):
            raise ValueError(f"method {self.name!r}: template {self.template.name!r} "
                             f"{'needs' if self.template.needs_budget else 'takes no'} budget")
        if self.budget is not None:
            self.template.render("", self.budget)  # validates the budget

    def prompt(self, problem: Problem) -> str:
        return self.template.render(problem.question, self.budget)


DIRECT_ANSWER = Method("direct", DIRECT)
VANILLA = Method("vanilla_cot", VANILLA_COT)


def budgeted(budget: int) -> Method:
    """Budgeted CoT at a fixed stated budget."""
    return Method(f"budget_{budget}", BUDGETED_COT, budget)


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (95% by default).

    >>> tuple(round(x, 3) for x in wilson_interval(5, 10))
    (0.237, 0.763)
    """
    if n <= 0:
        return (math.nan, math.nan)
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy with its Wilson 95% interval, mean/median output tokens, and
    the rates of unparseable answers and truncated outputs."""
    n = len(rows)
    if n == 0:
        raise ValueError("cannot summarise zero rows")
    k = sum(bool(r["correct"]) for r in rows)
    tokens = [r["n_output_tokens"] for r in rows]
    low, high = wilson_interval(k, n)
    return {
        "n": n,
        "n_correct": k,
        "accuracy": k / n,
        "accuracy_ci_low": low,
        "accuracy_ci_high": high,
        "mean_output_tokens": statistics.fmean(tokens),
        "median_output_tokens": statistics.median(tokens),
        "total_output_tokens": sum(tokens),
        "unparseable_rate": sum(r["prediction"] is None for r in rows) / n,
        "truncated_rate": sum(r["finish_reason"] == "length" for r in rows) / n,
    }


@dataclass
class Evaluation:
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    run: Run | None = field(default=None, repr=False)


def evaluate(backend: Backend, problems: Sequence[Problem], method: Method, *, max_new_tokens: int,
             run: Run | None = None, chunk_size: int = 64) -> Evaluation:
    """Answer every problem with `method` (greedy) and judge it. With `run`,
    rows already there are reused and new rows are appended chunk by chunk."""
    check_problems(problems, "evaluate")
    ids = [p.id for p in problems]
    done = {row["id"]: row for row in run.items()} if run is not None else {}
    todo = [p for p in problems if p.id not in done]
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start:start + chunk_size]
        gens = generate_in_batches(backend, [method.prompt(p) for p in chunk], max_new_tokens=max_new_tokens)
        rows = []
        for p, g in zip(chunk, gens):
            prediction = extract_answer(g.text)
            rows.append({"id": p.id, "method": method.name, "budget": method.budget, "gold": p.answer,
                         "prediction": prediction, "correct": is_correct(prediction, p.answer),
                         "n_output_tokens": g.n_output_tokens, "finish_reason": g.finish_reason,
                         "output": g.text})
        if run is not None:
            run.append(rows)
        done.update((r["id"], r) for r in rows)
    ordered = [done[i] for i in ids]
    summary = summarize(ordered)
    if run is not None and not run.finished:
        run.finish(summary)
    return Evaluation(ordered, summary, run)


def evaluate_run(backend: Backend, problems: Sequence[Problem], method: Method, *, max_new_tokens: int,
                 dataset: str, profile: str, step: str = "evaluate", root=None) -> Evaluation:
    """`evaluate` inside a run directory found by a hash of its config, so the
    same evaluation is computed once and reused (or resumed) afterwards."""
    identity = backend.identity()
    config = {"method": method.name, "template": method.template.text, "budget": method.budget,
              "max_new_tokens": max_new_tokens, "backend": identity, "dataset": dataset,
              "ids": [p.id for p in problems]}
    meta = run_metadata(identity, dataset=dataset, n=len(problems), profile=profile)
    run = start_run(step, config, metadata=meta, root=root)
    return evaluate(backend, problems, method, max_new_tokens=max_new_tokens, run=run)


def compare_methods(backend: Backend, datasets: dict[str, Sequence[Problem]], methods: Sequence[Method], *,
                    max_new_tokens: int, profile: str, step: str = "evaluate", root=None):
    """Every method on every dataset (each a reusable run): a pandas frame with
    one summary row per (dataset, method), plus the per-item rows."""
    import pandas as pd

    summaries, items = [], []
    for name, problems in datasets.items():
        for method in methods:
            ev = evaluate_run(backend, problems, method, max_new_tokens=max_new_tokens, dataset=name,
                              profile=profile, step=step, root=root)
            summaries.append({"dataset": name, "method": method.name, "budget": method.budget,
                              **ev.summary, "run_dir": str(ev.run.dir)})
            items.extend({"dataset": name, **row} for row in ev.rows)
    return pd.DataFrame(summaries), pd.DataFrame(items)
