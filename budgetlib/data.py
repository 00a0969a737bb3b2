"""Datasets as lists of `Problem`: GSM8K, GSM8K-Zero, the synthetic set, and
any JSON/JSONL file with a field mapping.

Named sets are looked up in this order: `BUDGETLIB_DATA_DIR`, then
``../shared/data`` next to the repository root, then the Hugging Face hub
(`openai/gsm8k`, config `main`). A local directory holds
``<name>/<split>.jsonl`` (e.g. ``gsm8k/test.jsonl``). Ids are stable:
``<source>:<split>:<0-based index>``, or the value of `id_field`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from . import synthetic
from .answers import format_number, normalize_answer
from .paths import data_dirs

__all__ = ["Problem", "DataError", "load", "load_available", "check_problems", "KNOWN_DATASETS", "gold_from_answer"]

HUB_SOURCES = {"gsm8k": ("openai/gsm8k", "main")}
KNOWN_DATASETS = ("gsm8k", "gsm8k-zero", "synthetic")
_HUB_FAILURES: dict[tuple[tuple[str, str], str], str] = {}
SPLITS = {"gsm8k": ("train", "test"), "gsm8k-zero": ("test",), "synthetic": ("train", "test")}


class DataError(ValueError):
    """A dataset that cannot be loaded: the message says where and why."""


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    answer: str
    source: str


def gold_from_answer(value: Any) -> str:
    """The gold answer from a raw answer field: the part after GSM8K's
    ``####`` when present, numbers normalised (``48.0`` -> ``"48"``)."""
    if isinstance(value, bool) or value is None:
        raise DataError(f"answer must be a string or a number, got {value!r}")
    if isinstance(value, (int, float)):
        return format_number(value)
    text = str(value)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    gold = normalize_answer(text)
    if gold is None:
        raise DataError(f"empty answer {value!r}")
    return gold


def load(name_or_path: str | Path, split: str = "test", limit: int | None = None,
         **options: Any) -> list[Problem]:
    """Load a dataset as a list of `Problem`.

    `name_or_path` is one of `KNOWN_DATASETS` or a ``.jsonl``/``.json`` path.
    For a path, options are `question_field` (a name or a list of names joined
    with one space), `answer_field`, `id_field` and `source`. For
    ``"synthetic"``, options are `steps`, `max_number`, `seed` and `n`.
    `limit` keeps the first `limit` problems.
    """
    if limit is not None and limit < 0:
        raise DataError(f"limit must be >= 0, got {limit}")
    path = Path(name_or_path)
    if path.suffix in (".jsonl", ".json"):
        problems = _load_file(path, split=split, **options)
    else:
        name = str(name_or_path).lower()
        if name not in KNOWN_DATASETS:
            raise DataError(f"unknown dataset {name_or_path!r}; known: {', '.join(KNOWN_DATASETS)}, "
                            "or a path to a .jsonl/.json file")
        if split not in SPLITS[name]:
            raise DataError(f"{name} has no split {split!r}; it has: {', '.join(SPLITS[name])}")
        if name == "synthetic":
            problems = _load_synthetic(split, limit=limit, **options)
        else:
            if options:
                raise DataError(f"{name}: unexpected options {sorted(options)}")
            problems = _load_named(name, split)
    if limit is not None:
        problems = problems[:limit]
    if not problems:
        raise DataError(f"dataset {name_or_path!r} split {split!r} is empty")
    return problems


def _load_synthetic(split: str, *, limit: int | None, n: int | None = None, **knobs: Any) -> list[Problem]:
    unknown = set(knobs) - {"steps", "max_number", "seed"}
    if unknown:
        raise DataError(f"synthetic: unknown options {sorted(unknown)}; known: steps, max_number, seed, n")
    n = n if n is not None else limit
    pairs = synthetic.generate(split, n, **knobs)
    source = "synthetic" if not knobs else "synthetic-" + "-".join(f"{k}{v}" for k, v in sorted(knobs.items()))
    return [Problem(f"{source}:{split}:{i}", q, a, source) for i, (q, a) in enumerate(pairs)]


def _load_named(name: str, split: str) -> list[Problem]:
    tried = []
    for root in data_dirs():
        candidate = root / name / f"{split}.jsonl"
        if candidate.is_file():
            return _load_file(candidate, split=split, source=name)
        tried.append(str(candidate))
    hub = HUB_SOURCES.get(name)
    if hub is None:
        tried.append(f"the hub: no public copy of {name} is known to budgetlib")
    elif (hub, split) in _HUB_FAILURES:  # offline: fail fast after the first (slow) attempt
        tried.append(_HUB_FAILURES[(hub, split)] + " (remembered from an earlier attempt in this process)")
    else:
        try:
            rows = _hub_rows(*hub, split)
            located = ((f"hub {hub[0]} {split} row {i}", row) for i, row in enumerate(rows))
            return _problems(located, source=name, split=split)
        except DataError:
            raise
        except Exception as exc:  # network errors vary by datasets version
            _HUB_FAILURES[(hub, split)] = f"the hub {hub[0]} ({hub[1]}): {type(exc).__name__}: {str(exc)[:200]}"
            tried.append(_HUB_FAILURES[(hub, split)])
    raise DataError(f"dataset {name!r} split {split!r} not found. Looked in:\n  - " + "\n  - ".join(tried)
                    + "\nSet BUDGETLIB_DATA_DIR to a directory holding "
                    f"{name}/{split}.jsonl.")


def _hub_rows(repo: str, config: str, split: str) -> list[dict]:
    import datasets  # imported lazily: slow, and only needed without local data

    return list(datasets.load_dataset(repo, config, split=split))


def _load_file(path: Path, *, split: str, question_field: str | Sequence[str] = "question",
               answer_field: str = "answer", id_field: str | None = None,
               source: str | None = None) -> list[Problem]:
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    rows = list(_read_rows(path))
    return _problems(rows, source=source or path.stem, split=split, question_field=question_field, answer_field=answer_field, id_field=id_field)


def _read_rows(path: Path) -> Iterable[tuple[str, Any]]:
    """(location, row) pairs; the location names the file and line."""
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg}") from exc
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
        for i, row in enumerate(data):
            yield f"{path}[{i}]", row
        return
    with path.open(encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: malformed JSON line: {exc.msg}") from exc


def _problems(rows: Iterable[tuple[str, Any]], *, source: str, split: str,
              question_field: str | Sequence[str] = "question", answer_field: str = "answer",
              id_field: str | None = None) -> list[Problem]:
    fields = [question_field] if isinstance(question_field, str) else list(question_field)
    if not fields:
        raise DataError("question_field must name at least one field")
    problems, seen = [], set()
    for index, (location, row) in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{location}: expected a JSON object, got {type(row).__name__}")
        needed = fields + [answer_field] + ([id_field] if id_field else [])
        for field in needed:
            if field not in row:
                raise DataError(f"{location}: missing field {field!r}; keys present: {sorted(row)}")
        question = " ".join(str(row[f]).strip() for f in fields)
        try:
            gold = gold_from_answer(row[answer_field])
        except DataError as exc:
            raise DataError(f"{location}: field {answer_field!r}: {exc}") from None
        pid = str(row[id_field]) if id_field else f"{source}:{split}:{index}"
        if pid in seen:
            raise DataError(f"{location}: duplicate id {pid!r} in field {id_field!r}")
        seen.add(pid)
        problems.append(Problem(pid, question, gold, source))
    return problems


def load_available(specs: dict[str, tuple[str, str, int | None]]
                   ) -> tuple[dict[str, list[Problem]], dict[str, str]]:
    """Load each ``label: (name_or_path, split, limit)`` that is reachable.
    Returns the loaded sets and, for the others, why they were skipped (for
    notebooks, which skip an unreachable dataset visibly instead of failing)."""
    loaded, skipped = {}, {}
    for label, (name, split, limit) in specs.items():
        try:
            loaded[label] = load(name, split, limit)
        except DataError as exc:
            skipped[label] = str(exc)
    return loaded, skipped


def check_problems(problems: Sequence[Problem], task: str) -> None:
    """Reject an empty problem list or duplicate ids before `task` starts."""
    if not problems:
        raise ValueError(f"no problems to {task}")
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"problem ids must be unique; {duplicate!r} appears more than once")
