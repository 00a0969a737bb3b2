"""Final-answer extraction and judging: one judge for every method and dataset.

`extract_answer` looks for the answer in this order and takes the *last*
occurrence of the first kind that is present:

1. ``[[x]]`` (the TALE answer format),
2. ``\\boxed{x}``,
3. ``Answer: x``,
4. ``#### x`` (GSM8K's gold format),
5. the last number anywhere in the text.

Numbers are normalised (thousands separators, ``$``, ``%``, trailing periods,
``+``/unicode minus signs, ``5.0`` -> ``5``, simple fractions ``3/4`` -> ``0.75``,
scientific notation ``1e3``, ``2.5E-2``, ``1.2 x 10^3`` -> ``1000``, ``0.025``, ``1200``)
so that `is_correct` can compare them numerically.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation, localcontext

__all__ = ["extract_answer", "format_number", "is_correct", "normalize_answer", "parse_number"]

# A number: optional sign and currency, digits with or without thousands
# separators (or a bare decimal like .5), optional decimals, optional
# "/denominator" for a simple fraction, optional percent sign.
_NUMBER = re.compile(
    r"(?<![\w.])"
    r"(?P<sign>[-+\u2212]?)\$?"
    r"(?P<int>\d{1,3}(?:,\d{3})+|\d+)?"
    r"(?P<dec>\.\d+)?"
    r"(?:(?:[eE](?P<exp>[-+]?\d{1,3})|\s?(?:[x×*]|\\times)\s?10\s?\^\s?\{?(?P<pow>[-+]?\d{1,3})\}?)(?![\w.]))?"
    r"(?:\s?/\s?(?P<den>\d+(?:\.\d+)?))?"
    r"\s?%?"
)
_DOUBLE_BRACKETS = re.compile(r"\[\[(.*?)\]\]", re.DOTALL)
_ANSWER_MARKER = re.compile(r"answer\s*(?:is)?\s*[:=]", re.IGNORECASE)
_HASHES_MARKER = re.compile(r"####")
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}")
# Characters that make a span an expression rather than "a number with a unit".
_EXPRESSION_CHARS = set("^\\{}=!*+<>")
_SIGNIFICANT_DIGITS = 12  # for fractions that do not terminate (1/3)


def _numbers(text: str) -> list[str]:
    """Every number in `text`, normalised, in order of appearance."""
    found = []
    for m in _NUMBER.finditer(text):
        if not (m.group("int") or m.group("dec")):
            continue
        value = _to_decimal(m)
        if value is not None:
            found.append(format_number(value))
    return found


def _to_decimal(m: re.Match) -> Decimal | None:
    value = Decimal((m.group("int") or "0").replace(",", "") + (m.group("dec") or ""))
    exponent = m.group("exp") or m.group("pow")
    if exponent is not None:  # 1e3, 2.5E-2, 1.2 x 10^3, 1.2 \times 10^{3}
        value = value.scaleb(int(exponent))
    den = m.group("den")
    if den is not None:
        if Decimal(den) == 0:
            return None
        with localcontext() as ctx:
            ctx.prec = _SIGNIFICANT_DIGITS
            value = value / Decimal(den)
    if m.group("sign") in ("-", "\u2212"):
        value = -value
    return value


def format_number(value: float | int | Decimal) -> str:
    """A number as a plain decimal string: no exponent, no trailing zeros.

    >>> format_number(5.0), format_number(1e16), format_number(0.00005), format_number(-2.50)
    ('5', '10000000000000000', '0.00005', '-2.5')
    """
    if not isinstance(value, Decimal):
        try:
            value = Decimal(repr(float(value))) if isinstance(value, float) else Decimal(value)
        except InvalidOperation as exc:
            raise ValueError(f"not a finite number: {value!r}") from exc
    if not value.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    if value == 0:
        return "0"
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _decimal_of(text: str | None) -> Decimal | None:
    if text is None:
        return None
    cleaned = text.strip().rstrip(".").strip()
    m = _NUMBER.fullmatch(cleaned)
    if m is None or not (m.group("int") or m.group("dec")):
        return None
    return _to_decimal(m)


def parse_number(text: str | None) -> float | None:
    """The value of `text` if it is exactly one number (after normalisation)."""
    value = _decimal_of(text)
    return None if value is None else float(value)


def _delatex(span: str) -> str:
    """Simple LaTeX to plain text: \\frac{a}{b} -> a/b, \\$ -> $, \\% -> %."""
    span = _LATEX_FRAC.sub(r"\1/\2", span)
    return span.replace("\\$", "$").replace("\\%", "%").replace("\\!", "").replace("\\,", "")


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def normalize_answer(text: str | None) -> str | None:
    """Canonical form of an answer span: a number as a plain decimal string,
    otherwise the stripped text without a trailing period; None when empty.
    A single number with only words around it is that number
    (``"$18 per day"`` -> ``"18"``); an expression stays text (``"x^2"``)."""
    if text is None:
        return None
    span = _delatex(text.strip().strip("*").strip())
    while len(span) >= 2 and span[0] == "{" and span[-1] == "}" and _balanced(span[1:-1]):
        span = span[1:-1].strip()
    if not span:
        return None
    value = _decimal_of(span)
    if value is not None:
        return format_number(value)
    numbers = _numbers(span)
    if len(numbers) == 1 and not _EXPRESSION_CHARS & set(span):
        return numbers[0]
    return span.rstrip(".").strip() or None


def _boxed_contents(text: str) -> list[str]:
    """Contents of every \\boxed{...}, with nested braces balanced."""
    out = []
    for m in re.finditer(r"\\boxed\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append(text[m.end() : i - 1])
    return out


def _after_last_marker(text: str, marker: re.Pattern) -> str | None:
    """The answer after the last `marker`: to the end of its line, and for
    'Answer: 3 + 4 = 7' the result after the last '='; the first number there,
    else the normalised span."""
    matches = list(marker.finditer(text))
    if not matches:
        return None
    span = text[matches[-1].end():].lstrip()
    line = span.splitlines()[0] if span else ""
    line = line.rsplit("=", 1)[-1]
    numbers = _numbers(line)
    return numbers[0] if numbers else normalize_answer(line)


def extract_answer(text: str | None) -> str | None:
    """The model's final answer in `text`, normalised; None if there is none.

    >>> extract_answer("so 3 + 4 = 7. Answer: [[ 1,234 ]]")
    '1234'
    >>> extract_answer("The total is $12.50.")
    '12.5'
    >>> extract_answer("") is None
    True
    """
    if not text:
        return None
    for content in [*reversed(_DOUBLE_BRACKETS.findall(text)), *reversed(_boxed_contents(text))]:
        answer = normalize_answer(content.rsplit("=", 1)[-1])  # "[[5 + 3 = 8]]" -> 8
        if answer is not None:
            return answer
    for marker in (_ANSWER_MARKER, _HASHES_MARKER):
        answer = _after_last_marker(text, marker)
        if answer is not None:
            return answer
    numbers = _numbers(text)
    return numbers[-1] if numbers else None


def is_correct(prediction: str | None, gold: str | float | int | None, *, rel_tol: float = 1e-4) -> bool:
    """True when `prediction` matches `gold`: exactly when both are whole
    numbers, numerically within `rel_tol` when either has a fraction, else as
    case-insensitive normalised strings.

    >>> is_correct("5.0", "5"), is_correct("0.5", "1/2"), is_correct(None, "5")
    (True, True, False)
    """
    if prediction is None or gold is None:
        return False
    gold_text = format_number(gold) if isinstance(gold, (int, float)) else str(gold)
    pred_value, gold_value = _decimal_of(str(prediction)), _decimal_of(gold_text)
    if pred_value is not None and gold_value is not None:
        if pred_value == pred_value.to_integral_value() and gold_value == gold_value.to_integral_value():
            return pred_value == gold_value  # whole numbers must match exactly: 70001 is not 70000
        return math.isclose(float(pred_value), float(gold_value), rel_tol=rel_tol, abs_tol=1e-9)
    pred_norm, gold_norm = normalize_answer(str(prediction)), normalize_answer(gold_text)
    if pred_norm is None or gold_norm is None:
        return False
    return pred_norm.casefold() == gold_norm.casefold()
