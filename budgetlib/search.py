"""Optimal token-budget search (TALE), batched across questions.

For each question: β0 = its vanilla-CoT output length. Then

- ``halving`` (TALE's greedy, the default): try ⌊β/2⌋ while it is feasible
  and ≥ `min_budget`; stop at the first infeasible candidate.
- ``binary`` (our extension): bisect between 0 (infeasible by definition) and
  β0 (feasible: the vanilla answer) until ``hi - lo <= tolerance``; candidates
  below `min_budget` count as infeasible without asking the model.

Feasible(β) is ``correct`` (the budgeted answer is right and ended by
itself: an answer cut at `max_new_tokens` is never feasible), or with
``elastic`` (TALE's default) also strictly fewer output tokens than at the
last accepted budget — starting from the vanilla length.

A question whose vanilla CoT is wrong, or was cut at `max_new_tokens` (its
length is the cap's, so it cannot be β0), has no optimal budget: it stays in
the results with its reason. When no candidate below β0 is feasible, the optimal
budget is β0 with ``reduced = False`` and the vanilla answer's text/tokens.

`search_budgets` runs every question's search as one flow of requests
(`backends.base.generate_flow`): a question's next candidate is asked as soon
as its last answer exists. A backend that batches continuously (`HFBackend`)
starts it while other questions are still being answered; any other backend
runs the flow in rounds, every still-searching question's next candidate in
one call. `search_budgets_sequential` is the plain one-question-at-a-time
reference (what the peer code does). Both drive the same per-question state
machine, so with a deterministic backend they return identical results.

``ladder=True`` (halving only) asks a question's whole halving ladder
β0/2, β0/4, ... ≥ `min_budget` (`halving_ladder`) as soon as its vanilla
answer exists, and replays the same state machine over those answers: the
same results with a deterministic backend, one step of latency instead of
several, at the price of also generating the candidates below the first
infeasible one. One question's candidates differ only in the budget number,
so with ``shared_prefix=True`` a backend that supports it in rounds
(`HFBackend(continuous=False)`) encodes the common prompt prefix once per
question (off by default: it also groups the vanilla requests by their common
chat-template opening, which sends them through transformers' `generate`
instead of the compacting loop: slower on a CPU, LOG 2026-12-07), and
`HFBackend`'s continuous flow runs the chat template's opening once.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Literal, Sequence

from .answers import extract_answer, is_correct
from .backends.base import Backend, Generation, Request, generate_flow, generate_in_batches
from .backends.prefix_cache import prefix_sharing
from .data import Problem, check_problems, problems_digest
from .prompts import BUDGETED_COT, VANILLA_COT
from .runs import Run

__all__ = ["SearchConfig", "TraceStep", "BudgetSearchResult", "search_budgets", "search_budgets_sequential",
           "halving_ladder", "search_run", "search_config", "summarize_search", "results_frame",
           "STRATEGIES", "FEASIBILITIES"]

log = logging.getLogger(__name__)
STRATEGIES = ("halving", "binary")
FEASIBILITIES = ("elastic", "correct")
NO_VANILLA = "vanilla CoT answer is wrong"
TRUNCATED_VANILLA = "vanilla CoT answer was cut at max_new_tokens"
# bump when a decision rule changes, so runs searched under the old rule are not reused
RULES = "v2: an answer cut at max_new_tokens is never beta0 and never feasible"


@dataclass(frozen=True)
class SearchConfig:
    strategy: Literal["halving", "binary"] = "halving"
    feasibility: Literal["elastic", "correct"] = "elastic"
    min_budget: int = 1
    tolerance: int = 1
    max_new_tokens: int = 512

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.feasibility not in FEASIBILITIES:
            raise ValueError(f"feasibility must be one of {FEASIBILITIES}, got {self.feasibility!r}")
        for name in ("min_budget", "tolerance", "max_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class TraceStep:
    budget: int
    output_tokens: int
    correct: bool
    feasible: bool
    truncated: bool = False  # cut at max_new_tokens: never feasible


@dataclass
class BudgetSearchResult:
    id: str
    vanilla_tokens: int
    vanilla_correct: bool
    optimal_budget: int | None
    output_tokens: int
    output_text: str
    reduced: bool
    trace: list[TraceStep] = field(default_factory=list)
    reason: str | None = None

    def to_row(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "BudgetSearchResult":
        fields = {k: v for k, v in row.items() if k in cls.__dataclass_fields__}
        fields["trace"] = [TraceStep(**step) for step in row["trace"]]
        return cls(**fields)


class _QuestionSearch:
    """The search state of one question: ask `next_budget()`, then `observe()`."""

    def __init__(self, problem: Problem, vanilla: Generation, config: SearchConfig):
        self.problem, self.config = problem, config
        self.vanilla_tokens = vanilla.n_output_tokens
        # a truncated answer is never β0: its length is the cap's, not the model's (and it is never feasible)
        self.vanilla_truncated = vanilla.finish_reason == "length"
        self.vanilla_correct = (not self.vanilla_truncated
                                and is_correct(extract_answer(vanilla.text), problem.answer))
        self.trace: list[TraceStep] = []
        self.best_budget, self.best = self.vanilla_tokens, vanilla
        self.last_tokens = self.vanilla_tokens  # output tokens at the last accepted budget
        self.lo, self.hi = 0, self.vanilla_tokens  # binary: lo infeasible, hi feasible
        self.done = not self.vanilla_correct
        self.pending: int | None = None

    def next_budget(self) -> int | None:
        """The next candidate budget, or None when the search has ended."""
        if self.done:
            return None
        if self.config.strategy == "halving":
            candidate = self.best_budget // 2
            if candidate < self.config.min_budget:
                self.done = True
                return None
        else:
            while True:
                if self.hi - self.lo <= self.config.tolerance:
                    self.done = True
                    return None
                candidate = (self.lo + self.hi) // 2
                if candidate >= self.config.min_budget:
                    break
                self.lo = candidate  # below the floor: infeasible without asking
        self.pending = candidate
        return candidate

    def observe(self, gen: Generation) -> None:
        budget, self.pending = self.pending, None
        if budget is None:
            raise RuntimeError("observe() without a pending candidate")
        correct = is_correct(extract_answer(gen.text), self.problem.answer)
        feasible = correct and gen.finish_reason != "length" and (self.config.feasibility == "correct" or gen.n_output_tokens < self.last_tokens)
        self.trace.append(TraceStep(budget, gen.n_output_tokens, correct, feasible, gen.finish_reason == "length"))
        if feasible:
            self.best_budget, self.best, self.last_tokens = budget, gen, gen.n_output_tokens
            self.hi = budget
        elif self.config.strategy == "halving":
            self.done = True
        else:
            self.lo = budget

    def result(self) -> BudgetSearchResult:
        if not self.vanilla_correct:
            return BudgetSearchResult(self.problem.id, self.vanilla_tokens, False, None, self.best.n_output_tokens,
                                      self.best.text, False, [],
                                      TRUNCATED_VANILLA if self.vanilla_truncated else NO_VANILLA)
        reduced = self.best_budget < self.vanilla_tokens
        return BudgetSearchResult(self.problem.id, self.vanilla_tokens, True, self.best_budget,
                                  self.best.n_output_tokens, self.best.text, reduced, self.trace,
                                  None if reduced else "no smaller budget was feasible")


class _Store:
    """The finished results of a search: held in memory, and with a `Run`
    appended to its items (one row per question) as questions finish. The
    run's config is the search's key, so a run never mixes results of two
    models or settings."""

    def __init__(self, run: Run | None):
        self.run = run
        self.done = {row["id"]: BudgetSearchResult.from_row(row) for row in run.items()} if run is not None else {}

    def write(self, results: Sequence[BudgetSearchResult]) -> None:
        for r in results:
            self.done[r.id] = r
        if self.run is not None and results:
            self.run.append(r.to_row() for r in results)


def halving_ladder(start: int, floor: int = 1) -> list[int]:
    """`start`, ⌊start/2⌋, ⌊start/4⌋, ... while ≥ `floor`: every budget the
    halving search can try from `start` (⌊⌊x/2⌋/2⌋ = ⌊x/4⌋). Empty when
    `start` < `floor`.

    >>> halving_ladder(70, floor=4)
    [70, 35, 17, 8, 4]
    """
    if floor < 1:
        raise ValueError(f"floor must be >= 1, got {floor}")
    out = []
    while start >= floor:
        out.append(start)
        start //= 2
    return out


def _chunks(items: Sequence, size: int | None) -> Iterator[Sequence]:
    step = size or max(len(items), 1)
    for start in range(0, len(items), step):
        yield items[start:start + step]


def search_budgets(backend: Backend, problems: Sequence[Problem], *, strategy: str = "halving",
                   feasibility: str = "elastic", min_budget: int = 1, tolerance: int = 1,
                   max_new_tokens: int = 512, batch_size: int | None = None, group_size: int | None = 1024,
                   run: Run | None = None, progress: bool = True, ladder: bool = False,
                   shared_prefix: bool | None = None) -> list[BudgetSearchResult]:
    """Batched search: every question's candidates as one flow of requests
    (module docstring), continuous on a backend that supports it, else in
    rounds of one call (or calls of at most `batch_size` prompts) holding every
    still-searching question's next candidate; `batch_size` also caps a
    continuous batch's rows (None: the backend's own). Questions enter in
    groups of `group_size` (None: all at once) so a long run writes results
    early. Results come back in problem order; with `run` (a `runs.Run` keyed
    by the search's config, as `search_run` opens it) finished questions are
    appended to its items as they finish and every answer is kept as it
    arrives (`Run.keep_answers`), so a rerun skips finished questions and
    replays the answers of unfinished ones.

    `ladder` (halving only): all of a question's halving candidates at once,
    then the same decisions (module docstring). `shared_prefix` for the flow:
    None keeps the backend's own setting; backends without support ignore it.
    None of the three changes results, so none is part of the search
    fingerprint."""
    from tqdm.auto import tqdm

    config = SearchConfig(strategy, feasibility, min_budget, tolerance, max_new_tokens)  # type: ignore[arg-type]
    if ladder and strategy != "halving":
        raise ValueError(f"ladder mode is the halving ladder; strategy {strategy!r} picks its candidates "
                         "from earlier answers")
    check_problems(problems, "search")
    store = _Store(run)
    backend = run.keep_answers(backend) if run is not None else backend
    todo = [p for p in problems if p.id not in store.done]
    bar = tqdm(total=len(problems), initial=len(problems) - len(todo), desc=f"search ({strategy}, {feasibility})",
               disable=not progress, leave=False)
    def finish(s: _QuestionSearch) -> list[Request]:
        store.write([s.result()])
        bar.update(1)
        return []

    def ask(i: int, s: _QuestionSearch) -> list[Request]:
        """The question's next candidate as a request, or its result written when the search has ended."""
        budget = s.next_budget()
        if budget is None:
            return finish(s)
        return [Request(("candidate", i, budget), BUDGETED_COT.render(s.problem.question, budget))]

    for group in _chunks(todo, group_size):
        searches: dict[int, _QuestionSearch] = {}
        rungs: dict[int, dict[int, Generation]] = {}  # ladder mode: each question's answers by budget
        wanted: dict[int, int] = {}

        def follow(tag, gen: Generation) -> list[Request]:
            kind, i, budget = tag
            if kind == "vanilla":
                s = searches[i] = _QuestionSearch(group[i], gen, config)
                ladder_ = halving_ladder(s.vanilla_tokens // 2, config.min_budget) if ladder and not s.done else []
                if not ladder_:
                    return ask(i, s)
                rungs[i], wanted[i] = {}, len(ladder_)
                return [Request(("rung", i, b), BUDGETED_COT.render(s.problem.question, b)) for b in ladder_]
            s = searches[i]
            if kind == "candidate":
                s.observe(gen)
                return ask(i, s)
            rungs[i][budget] = gen  # ladder: replay the decisions once every rung is answered
            if len(rungs[i]) < wanted[i]:
                return []
            while (b := s.next_budget()) is not None:
                s.observe(rungs[i][b])
            return finish(s)

        with prefix_sharing(backend, shared_prefix):
            generate_flow(backend, [Request(("vanilla", i, None), VANILLA_COT.render(p.question))
                                    for i, p in enumerate(group)],
                          follow, max_new_tokens=max_new_tokens, batch_size=batch_size)
    bar.close()
    return [store.done[p.id] for p in problems]


def search_budgets_sequential(backend: Backend, problems: Sequence[Problem], *, strategy: str = "halving",
                              feasibility: str = "elastic", min_budget: int = 1, tolerance: int = 1,
                              max_new_tokens: int = 512, run: Run | None = None
                              ) -> list[BudgetSearchResult]:
    """The reference: one question at a time, one candidate per backend call."""
    config = SearchConfig(strategy, feasibility, min_budget, tolerance, max_new_tokens)  # type: ignore[arg-type]
    check_problems(problems, "search")
    store = _Store(run)
    backend = run.keep_answers(backend) if run is not None else backend
    for p in problems:
        if p.id in store.done:
            continue
        (vanilla,) = generate_in_batches(backend, [VANILLA_COT.render(p.question)], max_new_tokens=max_new_tokens)
        state = _QuestionSearch(p, vanilla, config)
        while (budget := state.next_budget()) is not None:
            (gen,) = generate_in_batches(backend, [BUDGETED_COT.render(p.question, budget)],
                                         max_new_tokens=max_new_tokens)
            state.observe(gen)
        store.write([state.result()])
    return [store.done[p.id] for p in problems]


def summarize_search(results: Sequence[BudgetSearchResult]) -> dict[str, Any]:
    """Counts and token savings. Savings are over the questions whose vanilla
    CoT was correct (the only ones with an optimal budget), comparing the
    answer at the optimal budget with the vanilla answer: correctness is kept
    by construction."""
    if not results:
        raise ValueError("no search results to summarise")
    searched = [r for r in results if r.optimal_budget is not None]
    vanilla_tokens = sum(r.vanilla_tokens for r in searched)
    optimal_tokens = sum(r.output_tokens for r in searched)
    n = len(searched)
    return {
        "n": len(results),
        "n_vanilla_correct": n,
        "n_vanilla_truncated": sum(r.reason == TRUNCATED_VANILLA for r in results),
        "candidate_truncated_rate": (sum(t.truncated for r in searched for t in r.trace)
                                     / max(1, sum(len(r.trace) for r in searched))),
        "n_reduced": sum(r.reduced for r in searched),
        "share_reduced": sum(r.reduced for r in searched) / n if n else None,
        "mean_vanilla_tokens": vanilla_tokens / n if n else None,
        "mean_optimal_tokens": optimal_tokens / n if n else None,
        "mean_optimal_budget": sum(r.optimal_budget for r in searched) / n if n else None,
        "token_saving": 1 - optimal_tokens / vanilla_tokens if vanilla_tokens else None,
        "mean_rounds": sum(len(r.trace) for r in searched) / n if n else None,
    }


def results_frame(results: Sequence[BudgetSearchResult]):
    """One row per question (pandas), without the trace and text."""
    import pandas as pd

    return pd.DataFrame([{k: v for k, v in r.to_row().items() if k not in ("trace", "output_text")} | {
        "rounds": len(r.trace)} for r in results])


def search_config(backend: Backend, problems: Sequence[Problem], dataset: str, **search_kwargs: Any) -> dict:
    """What decides a search's results, its run's key: the search settings, the backend's
    identity (model, revision, rendering, ...), the question ids and both templates.
    `ladder`, `shared_prefix`, `batch_size`, `group_size` and `progress` do not change
    results and are left out."""
    settings = {k: v for k, v in search_kwargs.items() if k in SearchConfig.__dataclass_fields__}
    return {"search": asdict(SearchConfig(**settings)), "backend": backend.identity(), "dataset": dataset,
            "ids": [p.id for p in problems], "data_sha256": problems_digest(problems), "templates": [VANILLA_COT.text, BUDGETED_COT.text],
            "rules": RULES}


def search_run(backend: Backend, problems: Sequence[Problem], *, dataset: str, profile: str,
               step: str = "02_budget_search", root=None, run_dir=None, label: str | None = None,
               **search_kwargs: Any):
    """`search_budgets` inside a run (`runs.reuse`) keyed by `search_config`:
    computed once, resumed if interrupted (finished questions and every
    answer so far are kept), reused afterwards. The run records `label`
    (default "optimal budget search (<strategy>, <feasibility>)"). Returns
    (results, run)."""
    from .runs import reuse

    config = search_config(backend, problems, dataset, **search_kwargs)
    label = label or f"optimal budget search ({config['search']['strategy']}, {config['search']['feasibility']})"

    def compute(run: Run) -> list[BudgetSearchResult]:
        results = search_budgets(backend, problems, run=run, **search_kwargs)
        run.finish(summarize_search(results))
        return results

    def load(run: Run) -> list[BudgetSearchResult]:
        by_id = {row["id"]: BudgetSearchResult.from_row(row) for row in run.items()}
        return [by_id[p.id] for p in problems]

    return reuse(step, config, compute, load, label=label, kind="search", dataset=dataset, profile=profile,
                 identity=config["backend"], problems=problems, root=root, run_dir=run_dir)
