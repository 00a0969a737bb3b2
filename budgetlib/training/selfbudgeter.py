"""SelfBudgeter: budget-first answers ``<budget>N</budget><solution>…</solution>``.

- `preset_prefix(N)`: a user-set budget, prefilled into the assistant turn.
- `build_cold_start`: the model's own correct answers (vanilla CoT, greedy or
  sampled), each labelled with its own output length as the budget and
  formatted, as SFT examples that teach the format.
- `grpo_prompts`: GRPO prompts with the gold answer and the upper budget
  (the length of the model's own correct answer, else the generation cap).
- `evaluate_selfbudgeter` / `preset_sweep`: accuracy, output tokens and
  budget adherence (share within the stated budget, mean |actual − stated| /
  stated), with the model's own budget or a preset one.
"""

from __future__ import annotations

import statistics
from typing import Any, Sequence

from ..answers import extract_answer, is_correct
from ..backends.base import Backend, generate_in_batches
from ..data import Problem, check_problems
from ..evaluate import summarize
from ..prompts import SELFBUDGETER, VANILLA_COT
from .data import BuildReport, GRPOPrompt, SFTExample
from .rewards import parse_selfbudgeter

__all__ = ["preset_prefix", "format_answer", "build_cold_start", "grpo_prompts", "evaluate_selfbudgeter",
           "preset_sweep"]


def preset_prefix(budget: int) -> str:
    """The assistant-turn prefill for a user-set budget."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
        raise ValueError(f"a preset budget must be a positive integer, got {budget!r}")
    return f"<budget>{budget}</budget><solution>"


def format_answer(budget: int, solution: str) -> str:
    return f"<budget>{budget}</budget><solution>{solution.strip()}</solution>"


def build_cold_start(backend: Backend, problems: Sequence[Problem], *, max_new_tokens: int, samples: int = 1,
                     temperature: float = 0.0, batch_size: int | None = None
                     ) -> tuple[list[SFTExample], BuildReport]:
    """Cold-start SFT data: for each problem, `samples` vanilla-CoT answers
    (greedy when 1), the correct and finished ones kept, each labelled with
    its own output length as the budget. Raises when none is left."""
    check_problems(problems, "build cold-start data from")
    if samples < 1 or (samples > 1 and temperature <= 0):
        raise ValueError("samples must be >= 1, and more than one sample needs temperature > 0")
    report = BuildReport(n_results=len(problems) * samples)
    examples, seen = [], set()
    for k in range(samples):
        gens = generate_in_batches(backend, [VANILLA_COT.render(p.question) for p in problems],
                                   max_new_tokens=max_new_tokens, batch_size=batch_size,
                                   temperature=temperature, seed=k)  # sampled: seed k per round
        for p, g in zip(problems, gens, strict=True):
            if g.finish_reason != "stop":
                report.skip("truncated")
            elif not is_correct(extract_answer(g.text), p.answer):
                report.skip("wrong")
            elif (p.id, g.text) in seen:
                report.skip("duplicate sample")
            else:
                seen.add((p.id, g.text))
                examples.append(SFTExample(p.id if samples == 1 else f"{p.id}#{k}", SELFBUDGETER.render(p.question),
                                           format_answer(g.n_output_tokens, g.text), g.n_output_tokens,
                                           g.n_output_tokens, "cold_start"))
    report.kept = len(examples)
    if not examples:
        raise ValueError(f"no cold-start examples: none of {report.n_results} answers was correct ({report.skipped})")
    return examples, report


def grpo_prompts(problems: Sequence[Problem], cold_start: Sequence[SFTExample], *, cap: int) -> list[GRPOPrompt]:
    """One GRPO prompt per problem; the upper budget is the shortest own
    correct answer from the cold-start data, else `cap`."""
    shortest: dict[str, int] = {}
    for x in cold_start:
        pid = x.id.split("#")[0]
        shortest[pid] = min(shortest.get(pid, x.budget), x.budget)
    return [GRPOPrompt(p.id, SELFBUDGETER.render(p.question), p.answer, shortest.get(p.id, cap)) for p in problems]


def evaluate_selfbudgeter(backend: Backend, problems: Sequence[Problem], *, max_new_tokens: int,
                          preset: int | None = None, batch_size: int | None = None
                          ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows and a summary: accuracy (Wilson 95%), output tokens, the share of
    well-formed answers, and adherence to the stated (or `preset`) budget."""
    check_problems(problems, "evaluate")
    prefix = preset_prefix(preset) if preset is not None else None
    gens = generate_in_batches(backend, [SELFBUDGETER.render(p.question) for p in problems],
                               max_new_tokens=max_new_tokens, batch_size=batch_size, assistant_prefix=prefix)
    rows = []
    for p, g in zip(problems, gens, strict=True):
        parsed = parse_selfbudgeter((prefix or "") + g.text)
        prediction = parsed.answer if parsed.solution is not None else extract_answer(g.text)
        stated = preset if preset is not None else parsed.budget
        rows.append({"id": p.id, "preset": preset, "budget": stated, "well_formed": parsed.well_formed,
                     "problem": parsed.problem, "prediction": prediction, "gold": p.answer,
                     "correct": is_correct(prediction, p.answer), "n_output_tokens": g.n_output_tokens,
                     "finish_reason": g.finish_reason, "output": g.text})
    summary = summarize(rows)  # accuracy (Wilson 95%), tokens, truncation, share within the stated budget
    stated = [r for r in rows if r["budget"]]
    summary.update({
        "well_formed_rate": sum(r["well_formed"] for r in rows) / len(rows),
        "mean_stated_budget": summary["mean_budget"],
        "mean_relative_deviation": (statistics.fmean(abs(r["n_output_tokens"] - r["budget"]) / r["budget"]
                                                     for r in stated) if stated else None),
    })
    return rows, summary


def preset_sweep(backend: Backend, problems: Sequence[Problem], budgets: Sequence[int], *, max_new_tokens: int,
                 batch_size: int | None = None):
    """User-preset budgets: for each N, prefill ``<budget>N</budget>`` and
    measure actual length, accuracy and adherence (a pandas frame)."""
    import pandas as pd

    return pd.DataFrame([{"preset": b, **evaluate_selfbudgeter(backend, problems, max_new_tokens=max_new_tokens,
                                                               preset=b, batch_size=batch_size)[1]}
                         for b in budgets])
