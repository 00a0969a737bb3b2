"""SelfBudgeter: budget-first answers ``<budget>N</budget><solution>…</solution>``.

- `preset_prefix(N)`: a user-set budget, prefilled into the assistant turn.
- `build_cold_start`: the model's own correct answers (vanilla CoT, greedy or
  sampled), each labelled with its own output length as the budget and
  formatted, as SFT examples that teach the format.
- `grpo_prompts`: GRPO prompts with the gold answer and the upper budget
  b_max (the length of the model's own correct answer; infinity, i.e. no
  budget penalty, when it has none).
- `evaluate_selfbudgeter` / `preset_sweep`: accuracy, output tokens and
  budget adherence (share within the stated budget, mean |actual − stated| /
  stated), with the model's own budget or a preset one.
"""

from __future__ import annotations

import math
import statistics
from functools import partial
from typing import Any, Sequence

from ..answers import extract_answer, is_correct
from ..backends.base import Backend, Generation, generate_in_batches
from ..data import Problem, check_problems, problems_digest
from ..evaluate import summarize
from ..runs import Run, reuse
from ..prompts import SELFBUDGETER, VANILLA_COT
from ..tokens import count_tokens
from .data import BuildReport, GRPOPrompt, SFTExample
from .rewards import parse_selfbudgeter

__all__ = ["preset_prefix", "format_answer", "labelled_answer", "build_cold_start", "cold_start_run", "grpo_prompts",
           "evaluate_selfbudgeter", "summarize_selfbudgeter", "selfbudgeter_run", "preset_sweep"]


def preset_prefix(budget: int) -> str:
    """The assistant-turn prefill for a user-set budget."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
        raise ValueError(f"a preset budget must be a positive integer, got {budget!r}")
    return f"<budget>{budget}</budget><solution>"


def format_answer(budget: int, solution: str) -> str:
    return f"<budget>{budget}</budget><solution>{solution.strip()}</solution>"


def labelled_answer(solution: str, n_output_tokens: int, tokenizer=None) -> tuple[str, int]:
    """`solution` formatted with its own length as the budget. The budget
    counts the whole formatted answer (tags included: what the reward and
    the adherence measures count), found as a fixed point of
    N = tokens(format_answer(N, solution)). Without a tokenizer (scripted
    backends) N is the solution's own `n_output_tokens`."""
    if tokenizer is None:
        return format_answer(n_output_tokens, solution), n_output_tokens
    budget = n_output_tokens
    for _ in range(8):
        n = count_tokens(tokenizer, format_answer(budget, solution))
        if n == budget:
            break
        budget = n
    return format_answer(budget, solution), budget


def _sample_rounds(backend: Backend, problems: Sequence[Problem], *, samples: int, max_new_tokens: int,
                   temperature: float, batch_size: int | None) -> dict[tuple[int, str], Generation]:
    """Every (round k, problem id) → vanilla-CoT generation (sampled rounds: seed k)."""
    done: dict[tuple[int, str], Generation] = {}
    for k in range(samples):
        gens = generate_in_batches(backend, [VANILLA_COT.render(p.question) for p in problems],
                                   max_new_tokens=max_new_tokens, batch_size=batch_size,
                                   temperature=temperature, seed=k)
        done.update({(k, p.id): g for p, g in zip(problems, gens, strict=True)})
    return done


def build_cold_start(backend: Backend, problems: Sequence[Problem], *, max_new_tokens: int, samples: int = 1,
                     temperature: float = 0.0, batch_size: int | None = None) -> tuple[list[SFTExample], BuildReport]:
    """Cold-start SFT data: for each problem, `samples` vanilla-CoT answers
    (greedy when 1), the correct and finished ones kept, each labelled with
    its own length as the budget (`labelled_answer`, with the backend's
    tokenizer when it has one). Raises when none is left. `cold_start_run`
    makes it a resumable run."""
    check_problems(problems, "build cold-start data from")
    if samples < 1 or (samples > 1 and temperature <= 0):
        raise ValueError("samples must be >= 1, and more than one sample needs temperature > 0")
    gens = _sample_rounds(backend, problems, samples=samples, max_new_tokens=max_new_tokens,
                          temperature=temperature, batch_size=batch_size)
    report = BuildReport(n_results=len(problems) * samples)
    tokenizer = getattr(backend, "tokenizer", None)
    examples, seen = [], set()
    for k in range(samples):
        for p in problems:
            g = gens[(k, p.id)]
            if g.finish_reason != "stop":
                report.skip("truncated")
            elif not is_correct(extract_answer(g.text), p.answer):
                report.skip("wrong")
            elif (p.id, g.text) in seen:
                report.skip("duplicate sample")
            else:
                seen.add((p.id, g.text))
                completion, budget = labelled_answer(g.text, g.n_output_tokens, tokenizer)
                examples.append(SFTExample(p.id if samples == 1 else f"{p.id}#{k}", SELFBUDGETER.render(p.question),
                                           completion, budget, budget, "cold_start"))
    report.kept = len(examples)
    if not examples:
        raise ValueError(f"no cold-start examples: none of {report.n_results} answers was correct ({report.skipped})")
    return examples, report


def cold_start_run(backend: Backend, problems: Sequence[Problem], *, max_new_tokens: int, dataset: str,
                   profile: str, samples: int = 1, temperature: float = 0.0, batch_size: int | None = None,
                   step: str = "07_selfbudgeter", root=None):
    """`build_cold_start` as a run (`training.data.data_run`) keyed by the backend, the question ids,
    `samples`, `temperature`, `max_new_tokens` and the templates: built once, its answers kept as they
    arrive (sampled ones too), reused afterwards. Returns (examples, run)."""
    from .data import data_run

    config = {"data": "selfbudgeter_cold_start", "samples": samples, "temperature": temperature,
              "max_new_tokens": max_new_tokens, "templates": [VANILLA_COT.text, SELFBUDGETER.text]}
    build = partial(build_cold_start, problems=problems, max_new_tokens=max_new_tokens, samples=samples,
                    temperature=temperature, batch_size=batch_size)
    return data_run(step, config, build, label="SelfBudgeter cold-start data", backend=backend, problems=problems,
                    dataset=dataset, profile=profile, root=root)


def grpo_prompts(problems: Sequence[Problem], cold_start: Sequence[SFTExample]) -> list[GRPOPrompt]:
    """One GRPO prompt per problem; the upper budget b_max is the shortest own
    correct answer from the cold-start data. A problem the model never
    answered correctly gets infinity: as in the paper, no budget penalty then
    (`rewards.budget_penalty`)."""
    shortest: dict[str, int] = {}
    for x in cold_start:
        pid = x.id.split("#")[0]
        shortest[pid] = min(shortest.get(pid, x.budget), x.budget)
    return [GRPOPrompt(p.id, SELFBUDGETER.render(p.question), p.answer, shortest.get(p.id, math.inf)) for p in problems]


def _judge(p: Problem, g, prefix: str | None, preset: int | None, method: str) -> dict[str, Any]:
    parsed = parse_selfbudgeter((prefix or "") + g.text)
    prediction = parsed.answer if parsed.solution is not None else extract_answer(g.text)
    return {"id": p.id, "method": method, "preset": preset,
            "budget": preset if preset is not None else parsed.budget, "well_formed": parsed.well_formed,
            "problem": parsed.problem, "prediction": prediction, "gold": p.answer,
            "correct": is_correct(prediction, p.answer), "n_output_tokens": g.n_output_tokens,
            "finish_reason": g.finish_reason, "output": g.text}


def summarize_selfbudgeter(rows: Sequence[dict[str, Any]], *, model: str | None = None) -> dict[str, Any]:
    """`evaluate.summarize` (accuracy with its Wilson 95% interval, tokens,
    truncation, share within the stated budget, expense with `model`) plus
    the share of well-formed answers and the mean |actual − stated| / stated."""
    summary = summarize(rows, model=model)
    stated = [r for r in rows if r["budget"]]
    summary.update({
        "well_formed_rate": sum(r["well_formed"] for r in rows) / len(rows),
        "mean_stated_budget": summary["mean_budget"],
        "mean_relative_deviation": (statistics.fmean(abs(r["n_output_tokens"] - r["budget"]) / r["budget"]
                                                     for r in stated) if stated else None),
    })
    return summary


def evaluate_selfbudgeter(backend: Backend, problems: Sequence[Problem], *, max_new_tokens: int,
                          preset: int | None = None, batch_size: int | None = None, run: Run | None = None,
                          chunk_size: int = 64) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows and a summary (`summarize_selfbudgeter`) of greedy answers to the
    SelfBudgeter prompt, with the model's own budget or a `preset` one. The
    output length counts every generated token after the prefill. With
    `run`, rows already there are reused and new rows appended chunk by chunk."""
    check_problems(problems, "evaluate")
    prefix = preset_prefix(preset) if preset is not None else None
    method = "selfbudgeter" if preset is None else f"selfbudgeter@{preset}"
    done = {r["id"]: r for r in run.items()} if run is not None else {}
    todo = [p for p in problems if p.id not in done]
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start:start + chunk_size]
        gens = generate_in_batches(backend, [SELFBUDGETER.render(p.question) for p in chunk],
                                   max_new_tokens=max_new_tokens, batch_size=batch_size, assistant_prefix=prefix)
        rows = [_judge(p, g, prefix, preset, method) for p, g in zip(chunk, gens, strict=True)]
        if run is not None:
            run.append(rows)
        done.update((r["id"], r) for r in rows)
    rows = [done[p.id] for p in problems]
    summary = summarize_selfbudgeter(rows, model=backend.model_id)
    if run is not None and not run.finished:
        run.finish(summary)
    return rows, summary


def selfbudgeter_run(backend: Backend, problems: Sequence[Problem], *, max_new_tokens: int, dataset: str,
                     profile: str, label: str, preset: int | None = None, step: str = "07_selfbudgeter", root=None,
                     batch_size: int | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """`evaluate_selfbudgeter` inside a run (`runs.reuse`) keyed by its config:
    computed once, resumed or reused. `label` names the model being evaluated
    (e.g. "SelfBudgeter cold start"); the run records it with ", preset N" or
    " (own budget)" appended."""
    identity = backend.identity()
    config = {"method": "selfbudgeter", "template": SELFBUDGETER.text, "preset": preset,
              "max_new_tokens": max_new_tokens, "backend": identity, "dataset": dataset,
              "ids": [p.id for p in problems], "data_sha256": problems_digest(problems)}

    def compute(run: Run):
        return evaluate_selfbudgeter(backend, problems, max_new_tokens=max_new_tokens, preset=preset,
                                     batch_size=batch_size, run=run)

    def load(run: Run):
        by_id = {row["id"]: row for row in run.items()}
        return [by_id[p.id] for p in problems], run.summary()

    full_label = label + (f", preset {preset}" if preset is not None else " (own budget)")
    return reuse(step, config, compute, load, label=full_label, kind="evaluation", dataset=dataset,
                 profile=profile, identity=identity, problems=problems, root=root)[0]


def preset_sweep(backend: Backend, problems: Sequence[Problem], budgets: Sequence[int], *, max_new_tokens: int,
                 batch_size: int | None = None, **run_options):
    """User-preset budgets: for each N, prefill ``<budget>N</budget>`` and
    measure actual length, accuracy and adherence (a pandas frame). With
    `run_options` (dataset, profile, step, root) each N is a reusable run."""
    import pandas as pd

    rows = []
    for b in budgets:
        if run_options:
            summary = selfbudgeter_run(backend, problems, max_new_tokens=max_new_tokens, preset=b,
                                       batch_size=batch_size, **run_options)[1]
        else:
            summary = evaluate_selfbudgeter(backend, problems, max_new_tokens=max_new_tokens, preset=b,
                                            batch_size=batch_size)[1]
        rows.append({"preset": b, **summary})
    return pd.DataFrame(rows)
