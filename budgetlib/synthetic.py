"""A deterministic generator of multi-step arithmetic word problems.

This is the embedded default dataset: it needs no download, and at one step
it is easy enough that the 135M embedded model gets a clearly non-zero
accuracy on CPU, so smoke runs show real effects.

A problem is a start quantity followed by `steps` changes ("gets 4 more",
"gives away 3"); the gold answer is the final quantity, never negative.
Problems are drawn from one seeded stream and assigned to ``train`` or
``test`` by a hash of their text, so the two splits never share a question.
Gold answers equal to the number in the prompt's format example (50) are
skipped: a small model copies the example.
"""

from __future__ import annotations

import hashlib
import random

from .answers import format_number

__all__ = ["generate", "DEFAULT_SIZES", "FORMAT_EXAMPLE_ANSWER"]

NAMES = ("Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Isla",
         "Jun", "Kira", "Leo", "Maya", "Noah", "Olga", "Pablo", "Quinn", "Rosa",
         "Sami", "Tara", "Uma", "Victor", "Wen", "Yara", "Zoe")
ITEMS = ("apples", "books", "marbles", "stickers", "pencils", "cookies", "coins",
         "stamps", "shells", "cards", "balloons", "toy cars", "eggs", "flowers")
GAINS = ("gets {n} more", "buys {n} more", "finds {n} more", "is given {n} more")
LOSSES = ("gives away {n}", "loses {n}", "eats {n}", "sells {n}")
LOSSES_NONFOOD = ("gives away {n}", "loses {n}", "sells {n}")

DEFAULT_SIZES = {"train": 2000, "test": 500}
FORMAT_EXAMPLE_ANSWER = 50  # the number in prompts.ANSWER_FORMAT's example
TEST_SHARE = 5  # one problem in five goes to the test split


def _split_of(question: str) -> str:
    digest = hashlib.sha256(question.encode()).digest()
    return "test" if digest[0] % TEST_SHARE == 0 else "train"


def _one_problem(rng: random.Random, steps: int, max_number: int) -> tuple[str, int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    total = rng.randint(2, max_number)
    sentences = [f"{name} has {total} {item}."]
    losses = LOSSES if item in ("apples", "cookies", "eggs") else LOSSES_NONFOOD
    for i in range(steps):
        n = rng.randint(1, max_number)
        if total > 1 and rng.random() < 0.5:
            n = rng.randint(1, total - 1)
            total -= n
            verb = rng.choice(losses).format(n=n)
        else:
            total += n
            verb = rng.choice(GAINS).format(n=n)
        subject = name if i == 0 else rng.choice((name, "Then " + name, "After that, " + name))
        sentences.append(f"{subject} {verb}.")
    sentences.append(f"How many {item} does {name} have now?")
    return " ".join(sentences), total


def generate(split: str, n: int | None = None, *, steps: int = 1, max_number: int = 10,
             seed: int = 0) -> list[tuple[str, str]]:
    """`n` (question, gold answer) pairs of the given split, deterministic in
    (split, n, steps, max_number, seed); a prefix of a larger `n` is the same."""
    if split not in DEFAULT_SIZES:
        raise ValueError(f"synthetic: unknown split {split!r}; known: {sorted(DEFAULT_SIZES)}")
    if steps < 1 or max_number < 2:
        raise ValueError(f"synthetic: need steps >= 1 and max_number >= 2, got steps={steps}, "
                         f"max_number={max_number}")
    n = DEFAULT_SIZES[split] if n is None else n
    rng = random.Random(f"budgetlib-synthetic:{seed}:{steps}:{max_number}")
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 200 * max(n, 1):
            raise ValueError(f"synthetic: could not draw {n} distinct {split} problems with "
                             f"steps={steps}, max_number={max_number}; raise max_number")
        question, answer = _one_problem(rng, steps, max_number)
        if answer == FORMAT_EXAMPLE_ANSWER or question in seen:
            continue
        seen.add(question)
        if _split_of(question) == split:
            out.append((question, format_number(answer)))
    return out
