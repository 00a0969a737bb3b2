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
from .backends.base import Backend, Generation, generate_in_batches
from .data import Problem, check_problems, problems_digest
from .estimators import BudgetEstimate, BudgetEstimator
from .prompts import ANSWER_CLOSE, ANSWER_CUE, BUDGET_WORDINGS, BUDGETED_COT, DIRECT, VANILLA_COT, PromptTemplate
from .runs import Run, reuse
from .tokens import DEFAULT_PRICES, PriceTable, count_tokens, expense

__all__ = ["Method", "Evaluation", "evaluate", "evaluate_run", "compare_methods", "summarize", "wilson_interval",
           "paired_comparison", "DIRECT_ANSWER", "VANILLA", "budgeted", "estimated", "forced", "force_answers",
           "text_tokens"]


@dataclass(frozen=True)
class Method:
    """A prompting method: a template and, for budgeted CoT, either a fixed
    stated budget or an estimator that gives one per question (TALE-EP,
    learned, oracle). An estimate without a budget (a recorded fallback)
    answers with vanilla CoT. With `forced` (budget forcing, `forced`), the
    prompt states no budget: the answer's reasoning is cut at `budget` tokens
    and the answer is forced after it. `label` is the human name its runs record
    (what `results` shows): by default the name's, e.g. "vanilla CoT",
    "fixed budget β=50 (words)"."""

    name: str
    template: PromptTemplate
    budget: int | None = None
    estimator: BudgetEstimator | None = field(default=None, compare=False)
    label: str = field(default="", compare=False)
    forced: bool = False

    def __post_init__(self):
        if not self.label:
            object.__setattr__(self, "label", LABELS.get(self.name, self.name))
        if self.budget is not None and self.estimator is not None:
            raise ValueError(f"method {self.name!r}: give a fixed budget or an estimator, not both")
        has_budget = self.budget is not None or self.estimator is not None
        if self.forced:
            if not has_budget or self.template.needs_budget:
                raise ValueError(f"method {self.name!r}: budget forcing needs a budget and a template that "
                                 "states none")
            if self.budget is not None and (isinstance(self.budget, bool) or not isinstance(self.budget, int)
                                            or self.budget < 1):
                raise ValueError(f"method {self.name!r}: budget must be a positive integer, got {self.budget!r}")
        elif self.template.needs_budget != has_budget:
            raise ValueError(f"method {self.name!r}: template {self.template.name!r} "
                             f"{'needs' if self.template.needs_budget else 'takes no'} budget")
        if self.budget is not None and not self.forced:
            self.template.render("", self.budget)  # validates the budget

    def estimates(self, problems: Sequence[Problem]) -> list[BudgetEstimate]:
        if self.estimator is not None:
            estimates = self.estimator.estimate(problems)
            if len(estimates) != len(problems):
                raise RuntimeError(f"estimator of {self.name!r} returned {len(estimates)} estimates "
                                   f"for {len(problems)} problems")
            return estimates
        return [BudgetEstimate(self.budget, "fixed" if self.budget else "none") for _ in problems]

    def prompt(self, problem: Problem, estimate: BudgetEstimate | None = None) -> str:
        budget = self.budget if estimate is None else estimate.budget
        if self.forced:
            return self.template.render(problem.question)
        if self.template.needs_budget and budget is None:
            return VANILLA_COT.render(problem.question)
        return self.template.render(problem.question, budget if self.template.needs_budget else None)


LABELS = {"direct": "direct answer", "vanilla_cot": "vanilla CoT"}
DIRECT_ANSWER = Method("direct", DIRECT)
VANILLA = Method("vanilla_cot", VANILLA_COT)


def budgeted(budget: int, wording: str = "tokens") -> Method:
    """Budgeted CoT at a fixed stated budget, in one of `prompts.BUDGET_WORDINGS`
    (TALE's "use less than β tokens" by default; named ``budget_<β>``, other
    wordings ``budget_<β>_<wording>``)."""
    if wording not in BUDGET_WORDINGS:
        raise ValueError(f"unknown budget wording {wording!r}; known: {', '.join(BUDGET_WORDINGS)}")
    suffix = "" if wording == "tokens" else f"_{wording}"
    label = f"fixed budget β={budget}" + ("" if wording == "tokens" else f" ({wording})")
    return Method(f"budget_{budget}{suffix}", BUDGET_WORDINGS[wording], budget, label=label)


def forced(budget: int) -> Method:
    """Budget forcing (training-free; s1's budget forcing, our adaptation): the vanilla CoT prompt,
    the reasoning cut at `budget` output tokens, then `prompts.ANSWER_CUE` appended and the answer
    generated after it (`force_answers`). An answer that ends within the budget is kept as it is.
    Named ``forced_<β>``, labelled "budget forcing β=<β>"."""
    return Method(f"forced_{budget}", VANILLA_COT, budget, label=f"budget forcing β={budget}", forced=True)


def text_tokens(backend: Backend, text: str) -> int:
    """Tokens of `text` under the backend's tokenizer (HF `tokenizer`, or a `count_tokens` method such as
    llama-server's), else whitespace words (the scripted fake's tokens)."""
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is not None:
        return count_tokens(tokenizer, text)
    counter = getattr(backend, "count_tokens", None)
    return counter(text) if callable(counter) else len(text.split())


ANSWER_TOKENS = 24  # the forced answer's own tokens: enough for a number and its closing "]]"


def force_answers(backend: Backend, prompts: Sequence[str], budgets: Sequence[int], *,
                  answer_tokens: int = ANSWER_TOKENS,
                  cue: str = ANSWER_CUE) -> list[tuple[Generation, bool]]:
    """Budget forcing: each prompt's answer generated up to its budget; one that hits the budget gets
    `cue` appended (a prefill of the assistant turn) and up to `answer_tokens` more tokens, its answer.
    The answer ends at its first `prompts.ANSWER_CLOSE` (the cue opened the brackets): what a model writes
    after it ("16]] [[dollars]] [[per day]]") is dropped from the text and the count, as a stop at "]]"
    would (our reading; without it the judge read the last bracket, "per day"). Returns (generation,
    forced) per prompt: the text is reasoning + cue + answer, `n_output_tokens` counts all three (the cue,
    and an answer cut short, with the backend's tokenizer, `text_tokens`: everything the reader pays for),
    `finish_reason` is "stop" when the answer closed, else that of the answer's generation."""
    if len(prompts) != len(budgets):
        raise ValueError(f"got {len(budgets)} budgets for {len(prompts)} prompts")
    out: list[tuple[Generation, bool] | None] = [None] * len(prompts)
    cut: list[tuple[int, Generation]] = []
    for budget in sorted(set(budgets)):
        idx = [i for i, b in enumerate(budgets) if b == budget]
        for i, g in zip(idx, generate_in_batches(backend, [prompts[i] for i in idx], max_new_tokens=budget)):
            if g.finish_reason == "length":
                cut.append((i, g))
            else:
                out[i] = (g, False)
    if cut:
        cue_tokens = text_tokens(backend, cue)
        answers = backend.generate([prompts[i] for i, _ in cut], max_new_tokens=answer_tokens,
                                   assistant_prefix=[g.text + cue for _, g in cut])
        if len(answers) != len(cut):
            raise RuntimeError(f"backend {backend.model_id!r} returned {len(answers)} generations for {len(cut)}")
        for (i, g), a in zip(cut, answers):
            answer, n_answer, finish = a.text, a.n_output_tokens, a.finish_reason
            end = answer.find(ANSWER_CLOSE)
            if end >= 0:
                finish = "stop"
                if answer[end + len(ANSWER_CLOSE):].strip():
                    answer = answer[:end + len(ANSWER_CLOSE)]
                    n_answer = min(n_answer, text_tokens(backend, answer))
            out[i] = (Generation(g.text + cue + answer, g.n_output_tokens + cue_tokens + n_answer, finish), True)
    return out  # type: ignore[return-value]


def estimated(name: str, estimator: BudgetEstimator, label: str | None = None) -> Method:
    """Budgeted CoT with a per-question budget from `estimator` (TALE-EP);
    `label` defaults to `name`."""
    return Method(name, BUDGETED_COT, estimator=estimator, label=label or name)


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


def summarize(rows: Sequence[dict[str, Any]], *, model: str | None = None,
              prices: PriceTable = DEFAULT_PRICES) -> dict[str, Any]:
    """Accuracy with its Wilson 95% interval, mean/median output tokens, the
    rates of unparseable answers and truncated outputs; with budgets, the
    share of answers within their stated budget and of fallbacks; the share
    of answers whose reasoning was cut and answer forced (budget forcing); the
    estimator's own tokens; and, with `model`, the dollar expense of all
    output tokens (answers + estimator) at that model's output price."""
    n = len(rows)
    if n == 0:
        raise ValueError("cannot summarise zero rows")
    k = sum(bool(r["correct"]) for r in rows)
    tokens = [r["n_output_tokens"] for r in rows]
    low, high = wilson_interval(k, n)
    summary = {
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
        "forced_rate": sum(bool(r.get("forced")) for r in rows) / n,
    }
    budgeted_rows = [r for r in rows if r.get("budget") is not None]
    estimator_tokens = sum(r.get("estimator_tokens", 0) for r in rows)
    summary.update({
        "mean_budget": statistics.fmean(r["budget"] for r in budgeted_rows) if budgeted_rows else None,
        "within_budget_rate": (sum(r["n_output_tokens"] <= r["budget"] for r in budgeted_rows) / len(budgeted_rows)
                               if budgeted_rows else None),
        "fallback_rate": sum(str(r.get("budget_source", "")).endswith(":fallback") for r in rows) / n,
        "estimator_tokens": estimator_tokens,
        "mean_total_tokens": (sum(tokens) + estimator_tokens) / n,
    })
    if model is not None:
        summary["expense_usd"] = expense(model, 0, sum(tokens) + estimator_tokens, prices)
    return summary


@dataclass
class Evaluation:
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    run: Run | None = field(default=None, repr=False)


def evaluate(backend: Backend, problems: Sequence[Problem], method: Method, *, max_new_tokens: int,
             run: Run | None = None, chunk_size: int = 64, estimates: Sequence[BudgetEstimate] | None = None,
             prices: PriceTable = DEFAULT_PRICES) -> Evaluation:
    """Answer every problem with `method` (greedy) and judge it. `estimates`
    (one per problem) are the method's budgets when already computed. With
    `run`, rows already there are reused and new rows are appended chunk by
    chunk."""
    check_problems(problems, "evaluate")
    ids = [p.id for p in problems]
    done = {row["id"]: row for row in run.items()} if run is not None else {}
    todo = [p for p in problems if p.id not in done]
    if estimates is None:
        by_id = dict(zip([p.id for p in todo], method.estimates(todo))) if todo else {}
    else:
        if len(estimates) != len(problems):
            raise ValueError(f"got {len(estimates)} estimates for {len(problems)} problems")
        by_id = dict(zip(ids, estimates))
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start:start + chunk_size]
        prompts = [method.prompt(p, by_id[p.id]) for p in chunk]
        if method.forced:
            pairs = force_answers(backend, prompts, [min(by_id[p.id].budget or max_new_tokens, max_new_tokens)
                                                     for p in chunk])
        else:
            pairs = [(g, False) for g in generate_in_batches(backend, prompts, max_new_tokens=max_new_tokens)]
        rows = []
        for p, (g, was_forced) in zip(chunk, pairs):
            prediction, est = extract_answer(g.text), by_id[p.id]
            rows.append({"id": p.id, "method": method.name, "forced": was_forced, "budget": est.budget,
                         "budget_source": est.source,
                         "estimator_tokens": est.cost_tokens, "gold": p.answer, "prediction": prediction,
                         "correct": is_correct(prediction, p.answer), "n_output_tokens": g.n_output_tokens,
                         "finish_reason": g.finish_reason, "output": g.text, "estimator_output": est.raw})
        if run is not None:
            run.append(rows)
        done.update((r["id"], r) for r in rows)
    ordered = [done[i] for i in ids]
    summary = summarize(ordered, model=backend.model_id, prices=prices)
    if run is not None and not run.finished:
        run.finish(summary)
    return Evaluation(ordered, summary, run)


def evaluate_run(backend: Backend, problems: Sequence[Problem], method: Method, *, max_new_tokens: int,
                 dataset: str, profile: str, step: str = "evaluate", root=None,
                 label: str | None = None, chunk_size: int = 64) -> Evaluation:
    """`evaluate` inside a run (`runs.reuse`) keyed by a hash of its config, so the
    same evaluation is computed once and reused (or resumed) afterwards. The run
    records `label` (default the method's; e.g. "TALE-PT SFT" for vanilla CoT on
    a trained adapter): how `results` names it."""
    identity = backend.identity()
    estimates = method.estimates(problems)
    config = {"method": method.name, "template": method.template.text, "budget": method.budget,
              "max_new_tokens": max_new_tokens, "backend": identity, "dataset": dataset,
              "ids": [p.id for p in problems], "data_sha256": problems_digest(problems)}
    if method.estimator is not None:  # a run is defined by the budgets it was given
        config["estimates"] = [[e.budget, e.source] for e in estimates]
    if method.forced:  # budget forcing: how the answer is forced decides it too
        config["forced"] = {"cue": ANSWER_CUE, "answer_tokens": ANSWER_TOKENS, "answer_ends_at": ANSWER_CLOSE}

    def compute(run: Run) -> Evaluation:  # rows appended chunk by chunk, answers kept as they arrive
        return evaluate(run.keep_answers(backend), problems, method, max_new_tokens=max_new_tokens, run=run,
                        estimates=estimates, chunk_size=chunk_size)

    def load(run: Run) -> Evaluation:
        by_id = {row["id"]: row for row in run.items()}
        return Evaluation([by_id[p.id] for p in problems], run.summary(), run)

    evaluation, _ = reuse(step, config, compute, load, label=label or method.label, kind="evaluation",
                          dataset=dataset, identity=identity, problems=problems, profile=profile, root=root)
    return evaluation


def compare_methods(backend: Backend, datasets: dict[str, Sequence[Problem]], methods: Sequence[Method], *,
                    max_new_tokens: int, profile: str, step: str = "evaluate", root=None,
                    label: str | None = None):
    """Every method on every dataset (each a reusable run): a pandas frame with
    one summary row per (dataset, method), plus the per-item rows. `label`
    names the runs of a single method (e.g. "TALE-PT DPO"); by default each
    run gets its method's label."""
    import pandas as pd

    if label is not None and len(methods) != 1:
        raise ValueError(f"label={label!r} names one method's runs; got {len(methods)} methods")
    summaries, items = [], []
    for name, problems in datasets.items():
        for method in methods:
            ev = evaluate_run(backend, problems, method, max_new_tokens=max_new_tokens, dataset=name,
                              profile=profile, step=step, root=root, label=label)
            summaries.append({"dataset": name, "method": method.name, "label": label or method.label,
                              "budget": method.budget,
                              **ev.summary, "run_dir": str(ev.run.dir)})
            items.extend({"dataset": name, **row} for row in ev.rows)
    return pd.DataFrame(summaries), pd.DataFrame(items)


def paired_comparison(rows_a: Sequence[dict[str, Any]], rows_b: Sequence[dict[str, Any]], *,
                      n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Two methods on the same questions: McNemar's exact test on the
    discordant pairs for accuracy, and a paired bootstrap 95% interval for
    the mean difference in output tokens (b - a).

    >>> a = [{"id": str(i), "correct": i < 8, "n_output_tokens": 100} for i in range(20)]
    >>> b = [{"id": str(i), "correct": i < 2, "n_output_tokens": 40} for i in range(20)]
    >>> r = paired_comparison(a, b)
    >>> (r["a_only_correct"], r["b_only_correct"], round(r["mcnemar_p"], 4), r["mean_token_diff"])
    (6, 0, 0.0312, -60.0)
    """
    import random

    if not rows_a or n_boot < 1:
        raise ValueError(f"paired comparison needs at least one question and n_boot >= 1, "
                         f"got {len(rows_a)} questions, n_boot={n_boot}")
    a_by_id, b_by_id = {r["id"]: r for r in rows_a}, {r["id"]: r for r in rows_b}
    if set(a_by_id) != set(b_by_id):
        raise ValueError("paired comparison needs the same question ids on both sides")
    ids = sorted(a_by_id)
    a_only = sum(a_by_id[i]["correct"] and not b_by_id[i]["correct"] for i in ids)
    b_only = sum(b_by_id[i]["correct"] and not a_by_id[i]["correct"] for i in ids)
    m = a_only + b_only
    tail = sum(math.comb(m, j) for j in range(0, min(a_only, b_only) + 1)) / 2 ** m if m else 1.0
    diffs = [b_by_id[i]["n_output_tokens"] - a_by_id[i]["n_output_tokens"] for i in ids]
    rng = random.Random(seed)
    boots = sorted(statistics.fmean(rng.choices(diffs, k=len(diffs))) for _ in range(n_boot))
    return {"n": len(ids), "a_only_correct": a_only, "b_only_correct": b_only,
            "mcnemar_p": min(1.0, 2 * tail), "mean_token_diff": statistics.fmean(diffs),
            "token_diff_ci_low": boots[int(0.025 * n_boot)], "token_diff_ci_high": boots[int(0.975 * n_boot) - 1]}
