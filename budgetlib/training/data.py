"""Training data for TALE-PT, built from budget-search results.

- SFT (TALE-PT): prompt = the vanilla CoT prompt (no budget), target = the
  model's own correct answer under its searched optimal budget. When the
  optimal budget is β0 (no smaller budget was feasible) the search holds only
  the vanilla answer, so the budgeted answer is generated once at β0 and kept
  only if correct. Questions without an optimal budget are skipped and
  counted.
- Shortest correct of samples (our extension, issue 21): where the stated
  budget collapses the answer (the embedded Qwen2.5-Coder models), the search
  yields almost no targets, so the target is the shortest correct answer among
  the greedy vanilla answer and a few sampled ones, under the vanilla prompt
  (rejection sampling for brevity: the model's own answers, only shorter).
  Optionally each target is then made brief (`compress_examples`): rewritten
  by the model, or cut to its calculation lines and its answer; the brief text
  replaces its target only if it is shorter, keeps a calculation and is still
  correct.
- Budget-conditioned SFT: the same target, with the searched budget stated in
  the prompt (at inference a budget estimator supplies it).
- DPO pairs: chosen = the budgeted correct answer, rejected = the vanilla CoT
  answer of the same question, both under the vanilla prompt; by default only
  pairs where chosen is strictly shorter than rejected.

Training and evaluation questions must not overlap: `budgetlib.data.check_no_overlap` and
`drop_overlap` (re-exported here) check it by id, normalised text and problem statement.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Sequence

from ..answers import extract_answer, is_correct
from ..backends.base import Backend, Generation, generate_in_batches
from ..data import LeakageError, Problem, check_no_overlap, check_problems, drop_overlap, problems_digest
from ..prompts import BUDGETED_COT, COMPRESS_SOLUTION, VANILLA_COT

__all__ = ["LeakageError", "check_no_overlap", "drop_overlap",
           "SFTExample", "DPOPair", "GRPOPrompt", "BuildReport", "build_sft_examples", "build_dpo_pairs", "data_run",
           "sft_data_run", "dpo_data_run", "build_shortest_correct_examples", "sampled_sft_data_run",
           "compress_examples", "compressed_sft_data_run", "items_hash", "calculation_lines", "results_hash",
           "rows_to_items", "load_jsonl", "to_dataset"]


@dataclass(frozen=True)
class SFTExample:
    id: str
    prompt: str
    completion: str
    budget: int
    n_tokens: int
    source: str  # "search", "regenerated_at_beta0", "shortest_greedy" / "shortest_sampled" (of samples), or
    # "compressed" (one of those made brief: cut to its calculation lines, or rewritten by the model)


@dataclass(frozen=True)
class DPOPair:
    id: str
    prompt: str
    chosen: str
    rejected: str
    chosen_tokens: int
    rejected_tokens: int


@dataclass(frozen=True)
class GRPOPrompt:
    """A GRPO training prompt with what the reward needs: the gold answer and
    the upper budget (the model's own correct answer length, else the cap)."""

    id: str
    prompt: str
    answer: str
    upper_budget: int


@dataclass
class BuildReport:
    n_results: int = 0
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def _matched(problems: Sequence[Problem], results) -> list[tuple[Problem, Any]]:
    check_problems(problems, "build training data from")
    by_id = {p.id: p for p in problems}
    unknown = [r.id for r in results if r.id not in by_id]
    if unknown:
        raise ValueError(f"{len(unknown)} search results are for questions not in `problems` "
                         f"(e.g. {unknown[0]!r}): results from another dataset or split?")
    return [(by_id[r.id], r) for r in results]


def _budgeted_targets(backend: Backend, pairs, max_new_tokens: int, report: BuildReport,
                      batch_size: int | None) -> dict[str, tuple[str, int, int, str]]:
    """id -> (text, tokens, budget, source) of a correct budgeted answer."""
    targets: dict[str, tuple[str, int, int, str]] = {}
    regenerate = []
    for problem, r in pairs:
        if r.optimal_budget is None:
            report.skip("no optimal budget (vanilla CoT wrong)")
        elif r.reduced:
            targets[r.id] = (r.output_text, r.output_tokens, r.optimal_budget, "search")
        else:
            regenerate.append((problem, r))
    gens = generate_in_batches(backend, [BUDGETED_COT.render(p.question, r.optimal_budget) for p, r in regenerate],
                               max_new_tokens=max_new_tokens, batch_size=batch_size) if regenerate else []
    for (problem, r), g in zip(regenerate, gens):
        if is_correct(extract_answer(g.text), problem.answer):
            targets[r.id] = (g.text, g.n_output_tokens, r.optimal_budget, "regenerated_at_beta0")
        else:
            report.skip("answer at β0 regenerated wrong")
    return targets


def build_sft_examples(backend: Backend, problems: Sequence[Problem], results, *, max_new_tokens: int,
                       conditioned: bool = False, batch_size: int | None = None
                       ) -> tuple[list[SFTExample], BuildReport]:
    """TALE-PT SFT examples from search `results` on `problems` (a train
    split). `conditioned=True` states the searched budget in the prompt
    (budget-conditioned SFT). Raises when nothing is left."""
    pairs = _matched(problems, results)
    report = BuildReport(n_results=len(pairs))
    targets = _budgeted_targets(backend, pairs, max_new_tokens, report, batch_size)
    examples = []
    for problem, r in pairs:
        if r.id not in targets:
            continue
        text, tokens, budget, source = targets[r.id]
        prompt = BUDGETED_COT.render(problem.question, budget) if conditioned else VANILLA_COT.render(problem.question)
        examples.append(SFTExample(r.id, prompt, text, budget, tokens, source))
    report.kept = len(examples)
    if not examples:
        raise ValueError(f"no SFT examples left after filtering {report.n_results} search results: {report.skipped}")
    return examples, report


def build_shortest_correct_examples(backend: Backend, problems: Sequence[Problem], *, samples: int,
                                    temperature: float, max_new_tokens: int, seed: int = 0,
                                    batch_size: int | None = None) -> tuple[list[SFTExample], BuildReport]:
    """SFT examples whose target is the shortest correct answer among the greedy vanilla CoT answer and
    `samples` answers sampled at `temperature` (seeds ``seed + 1 ... seed + samples``), all under the vanilla
    prompt (our extension: TALE takes the answer at the searched budget). An answer cut at `max_new_tokens`
    (finish "length") is never a target; ties go to the greedy answer, then the earlier sample. The
    example's budget is its target's token count. `report.stats` says how many targets came from the greedy
    answer and how long they are against the greedy answers of the same questions. Raises when no question
    has a correct answer."""
    check_problems(problems, "build training data from")
    if samples < 0 or (samples and temperature <= 0):
        raise ValueError(f"samples must be >= 0 and temperature > 0 to sample, got samples={samples}, "
                         f"temperature={temperature}")
    prompts = [VANILLA_COT.render(p.question) for p in problems]
    draw = partial(generate_in_batches, backend, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    draws = [draw(temperature=0.0, seed=seed)] + [draw(temperature=temperature, seed=seed + j)
                                                  for j in range(1, samples + 1)]
    report = BuildReport(n_results=len(problems))
    right = [[g.finish_reason != "length" and is_correct(extract_answer(g.text), p.answer) for g, p in zip(d, problems)]
             for d in draws]  # judged once: per draw and question
    examples, greedy_tokens = [], []
    for i, problem in enumerate(problems):
        correct = [(d[i].n_output_tokens, j, d[i]) for j, d in enumerate(draws) if right[j][i]]
        if not correct:
            report.skip(f"no correct answer among the greedy one and {samples} samples")
            continue
        n_tokens, j, g = min(correct, key=lambda c: c[:2])
        examples.append(SFTExample(problem.id, prompts[i], g.text, n_tokens, n_tokens,
                                   "shortest_greedy" if j == 0 else "shortest_sampled"))
        greedy_tokens.append(draws[0][i].n_output_tokens)
    report.kept = len(examples)
    if not examples:
        raise ValueError(f"no SFT examples: no correct answer among {len(draws)} answers to any of "
                         f"{len(problems)} questions")
    correct_rate = [sum(r) / len(problems) for r in right]
    report.stats = {"from_greedy": sum(x.source == "shortest_greedy" for x in examples),
                    "from_samples": sum(x.source == "shortest_sampled" for x in examples),
                    "mean_target_tokens": sum(x.n_tokens for x in examples) / len(examples),
                    "mean_greedy_tokens_same_questions": sum(greedy_tokens) / len(greedy_tokens),
                    "accuracy_per_draw": correct_rate}
    return examples, report


COMPRESSIONS = ("model", "calculations")
CALCULATIONS_RULE = ("segments (lines, then sentences) with '=' and a digit after it, then the last segment the "
                     "judge reads the text's answer from, v1")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\\])")


def calculation_lines(text: str) -> str | None:
    r"""The calculation segments of a solution (its lines, split again into sentences; a segment holding ``=``
    with a digit after it) and the last segment the judge reads the whole text's answer from, in order, one a
    line; None when there is no calculation or the answer is in no single segment.

    >>> calculation_lines("She sold 48 in April. In May: 48 / 2 = 24.\nTotal: 48 + 24 = 72\nSo \\boxed{72}.")
    'In May: 48 / 2 = 24.\nTotal: 48 + 24 = 72\nSo \\boxed{72}.'
    """
    segments = [seg.strip() for line in text.splitlines() for seg in _SENTENCE_END.split(line) if seg.strip()]
    answer = extract_answer(text)
    last = max((i for i, seg in enumerate(segments) if answer is not None and extract_answer(seg) == answer),
               default=None)
    calcs = {i for i, seg in enumerate(segments) if "=" in seg and any(ch.isdigit() for ch in seg.split("=", 1)[1])}
    if last is None or not calcs:
        return None
    return "\n".join(segments[i] for i in sorted(calcs | {last}))


def compress_examples(backend: Backend, problems: Sequence[Problem], examples: Sequence[SFTExample], *,
                      how: str = "model", batch_size: int | None = None) -> tuple[list[SFTExample], BuildReport]:
    """Each example's target made brief (our extension): `how="model"` asks the model to rewrite it
    (`prompts.COMPRESS_SOLUTION`, greedy, at most as many tokens as the target); `how="calculations"` keeps
    only its calculation lines and its answer line (`calculation_lines`, no generation: the model's own
    tokens, counted with the backend's tokenizer). The brief text replaces the target only if it ended by
    itself, is strictly shorter, keeps at least one calculation and is still correct (the one judge);
    otherwise the example stays as it was, and `report.skipped` counts why. Prompts stay; the new budget
    is the brief text's length."""
    from ..evaluate import text_tokens

    if how not in COMPRESSIONS:
        raise ValueError(f"unknown compression {how!r}; known: {', '.join(COMPRESSIONS)}")
    check_problems(problems, "compress training targets of")
    by_id = {p.id: p for p in problems}
    missing = [x.id for x in examples if x.id not in by_id]
    if missing:
        raise ValueError(f"{len(missing)} examples are for questions not in `problems` (e.g. {missing[0]!r})")
    briefs: list[Generation | None] = []
    if how == "calculations":
        for x in examples:
            text = calculation_lines(x.completion)
            briefs.append(None if text is None else Generation(text, text_tokens(backend, text), "stop"))
    else:
        briefs = [None] * len(examples)
        by_cap: dict[int, list[int]] = {}  # one call per cap: the rewrite may not be longer than its target
        for i, x in enumerate(examples):
            by_cap.setdefault(x.n_tokens, []).append(i)
        for cap, idx in by_cap.items():
            prompts = [COMPRESS_SOLUTION.format(question=by_id[examples[i].id].question,
                                                solution=examples[i].completion) for i in idx]
            for i, g in zip(idx, generate_in_batches(backend, prompts, max_new_tokens=cap, batch_size=batch_size)):
                briefs[i] = g
    report = BuildReport(n_results=len(examples))
    out = []
    for x, g in zip(examples, briefs):
        if g is not None and (g.finish_reason == "length" or g.n_output_tokens >= x.n_tokens):
            report.skip("not shorter")
        elif g is None or calculation_lines(g.text) is None:
            report.skip("no calculation kept")
        elif not is_correct(extract_answer(g.text), by_id[x.id].answer):
            report.skip("answer changed")
        else:
            out.append(SFTExample(x.id, x.prompt, g.text, g.n_output_tokens, g.n_output_tokens, "compressed"))
            continue
        out.append(x)
    report.kept = sum(x.source == "compressed" for x in out)
    report.stats = {"mean_tokens_before": sum(x.n_tokens for x in examples) / max(len(examples), 1),
                    "mean_tokens_after": sum(x.n_tokens for x in out) / max(len(out), 1)}
    return out, report


def build_dpo_pairs(backend: Backend, problems: Sequence[Problem], results, *, max_new_tokens: int,
                    keep_all: bool = False, batch_size: int | None = None) -> tuple[list[DPOPair], BuildReport]:
    """DPO pairs (TALE): chosen = the correct budgeted answer, rejected = the
    vanilla CoT answer (generated under the vanilla prompt, greedy, so the
    generation cache returns the search's own vanilla pass), prompt = the
    vanilla prompt. Unless `keep_all`, only pairs with chosen strictly shorter."""
    pairs = _matched(problems, results)
    report = BuildReport(n_results=len(pairs))
    targets = _budgeted_targets(backend, pairs, max_new_tokens, report, batch_size)
    with_target = [(p, r) for p, r in pairs if r.id in targets]
    vanilla = generate_in_batches(backend, [VANILLA_COT.render(p.question) for p, _ in with_target],
                                  max_new_tokens=max_new_tokens, batch_size=batch_size) if with_target else []
    out = []
    for (problem, r), v in zip(with_target, vanilla):
        text, tokens, _, _ = targets[r.id]
        if not keep_all and tokens >= v.n_output_tokens:
            report.skip("chosen not shorter than rejected")
            continue
        out.append(DPOPair(r.id, VANILLA_COT.render(problem.question), text, v.text, tokens, v.n_output_tokens))
    report.kept = len(out)
    if not out:
        raise ValueError(f"no DPO pairs left after filtering {report.n_results} search results: {report.skipped}")
    return out, report


def results_hash(results) -> str:
    """sha256 of search results (what the SFT targets and DPO pairs are made from), in order."""
    import hashlib

    payload = json.dumps([r.to_row() for r in results], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def data_run(step: str, config: dict[str, Any], build, *, label: str, backend: Backend, problems: Sequence[Problem],
             dataset: str, profile: str, root=None):
    """Training data built once inside a run (`runs.reuse`) keyed by `config` plus the backend's identity
    and the question ids: ``build(backend)`` returns (items, report); the items become the run's items
    (one row per example, by id), the report its summary. Answers are kept as they arrive
    (`Run.keep_answers`, sampled ones too), so a build killed midway replays them. Returns (items, run)."""
    from ..runs import reuse

    identity = backend.identity()
    config = {**config, "backend": identity, "ids": [p.id for p in problems], "data_sha256": problems_digest(problems)}

    def compute(run):
        items, report = build(run.keep_answers(backend, sampled=True))
        run.clear_items()
        run.append(asdict(x) for x in items)
        run.finish({"n_results": report.n_results, "kept": report.kept, "skipped": report.skipped,
                    **({"stats": report.stats} if report.stats else {})})
        return items

    return reuse(step, config, compute, lambda run: rows_to_items(run.items(), run.items_path), label=label,
                 kind="training data", dataset=dataset, profile=profile, identity=identity, problems=problems,
                 root=root)


def sft_data_run(backend: Backend, problems: Sequence[Problem], results, *, max_new_tokens: int, dataset: str,
                 profile: str, step: str, conditioned: bool = False, batch_size: int | None = None, root=None):
    """`build_sft_examples` as a run keyed by the search results' hash, `conditioned`, `max_new_tokens`
    and the templates (plus backend and ids). Returns (examples, run)."""
    config = {"data": "tale_pt_sft", "conditioned": conditioned, "max_new_tokens": max_new_tokens,
              "results_sha256": results_hash(results), "templates": [VANILLA_COT.text, BUDGETED_COT.text]}
    build = partial(build_sft_examples, problems=problems, results=results, max_new_tokens=max_new_tokens,
                    conditioned=conditioned, batch_size=batch_size)
    label = "budget-conditioned SFT data" if conditioned else "TALE-PT SFT data"
    return data_run(step, config, build, label=label, backend=backend, problems=problems, dataset=dataset,
                    profile=profile, root=root)


def dpo_data_run(backend: Backend, problems: Sequence[Problem], results, *, max_new_tokens: int, dataset: str,
                 profile: str, step: str, keep_all: bool = False, batch_size: int | None = None, root=None):
    """`build_dpo_pairs` as a run keyed like `sft_data_run`'s (with `keep_all`). Returns (pairs, run)."""
    config = {"data": "tale_pt_dpo", "keep_all": keep_all, "max_new_tokens": max_new_tokens,
              "results_sha256": results_hash(results), "templates": [VANILLA_COT.text, BUDGETED_COT.text]}
    build = partial(build_dpo_pairs, problems=problems, results=results, max_new_tokens=max_new_tokens,
                    keep_all=keep_all, batch_size=batch_size)
    return data_run(step, config, build, label="TALE-PT DPO pairs", backend=backend, problems=problems,
                    dataset=dataset, profile=profile, root=root)


def rows_to_items(rows: Sequence[dict[str, Any]], where: str | Path) -> list[SFTExample | DPOPair | GRPOPrompt]:
    """Training items from their JSON rows (SFT, DPO or GRPO, told apart by their fields); `where`
    names the file in errors."""
    items: list[SFTExample | DPOPair | GRPOPrompt] = []
    for lineno, row in enumerate(rows, start=1):
        kind = DPOPair if "chosen" in row else GRPOPrompt if "upper_budget" in row else SFTExample
        try:
            items.append(kind(**row))
        except TypeError as exc:
            raise ValueError(f"{where}:{lineno}: not a {kind.__name__} row ({exc}); keys: {sorted(row)}") from None
    if not items:
        raise ValueError(f"{where}: no training examples")
    return items


def load_jsonl(path: str | Path) -> list[SFTExample | DPOPair | GRPOPrompt]:
    """Training items from a JSONL file: a data run's ``items.jsonl`` (`data_run`), or any file with
    one SFT, DPO or GRPO row per line (for ``python -m budgetlib train --data``)."""
    from ..runs import read_jsonl

    return rows_to_items(read_jsonl(Path(path)), path)


def to_dataset(items: Sequence[SFTExample | DPOPair]):
    """A `datasets.Dataset` with one column per field (trl's prompt/completion
    and prompt/chosen/rejected formats)."""
    import datasets

    return datasets.Dataset.from_list([asdict(x) for x in items])


def sampled_sft_data_run(backend: Backend, problems: Sequence[Problem], *, samples: int, temperature: float,
                         max_new_tokens: int, dataset: str, profile: str, step: str, seed: int = 0,
                         batch_size: int | None = None, root=None):
    """`build_shortest_correct_examples` as a run keyed by `samples`, `temperature`, `seed`,
    `max_new_tokens` and the template (plus backend and ids); the sampled answers are kept as they arrive,
    so a killed build resumes. Returns (examples, run)."""
    config = {"data": "shortest_correct_of_samples", "samples": samples, "temperature": temperature,
              "seed": seed, "max_new_tokens": max_new_tokens, "templates": [VANILLA_COT.text]}
    build = partial(build_shortest_correct_examples, problems=problems, samples=samples, temperature=temperature,
                    max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size)
    return data_run(step, config, build, label="TALE-PT SFT data (shortest correct of samples)", backend=backend,
                    problems=problems, dataset=dataset, profile=profile, root=root)


def compressed_sft_data_run(backend: Backend, problems: Sequence[Problem], examples: Sequence[SFTExample], *,
                            how: str, dataset: str, profile: str, step: str, batch_size: int | None = None,
                            root=None):
    """`compress_examples` as a run keyed by the examples' hash, `how` and its prompt or rule (plus backend
    and ids). Returns (examples, run): every input example, made brief where the brief text was kept."""
    config = {"data": "compressed_targets", "examples_sha256": items_hash(examples), "how": how,
              "rule": COMPRESS_SOLUTION if how == "model" else CALCULATIONS_RULE,
              "keep_if": "ended, shorter, a calculation kept, still correct"}
    build = partial(compress_examples, problems=problems, examples=examples, how=how, batch_size=batch_size)
    return data_run(step, config, build, label="TALE-PT SFT data (self-compressed targets)", backend=backend,
                    problems=problems, dataset=dataset, profile=profile, root=root)


def items_hash(items: Sequence[SFTExample | DPOPair | GRPOPrompt]) -> str:
    """sha256 of the training items as JSON (order kept: it is the data order)."""
    import hashlib

    payload = json.dumps([{"type": type(x).__name__, **asdict(x)} for x in items], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()
