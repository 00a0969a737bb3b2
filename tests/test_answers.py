"""Table-driven tests for budgetlib.answers (answer extraction and judging).

Expected values follow the documented spec and common sense, not whatever the
implementation happens to return.
"""

from __future__ import annotations

import pytest

from budgetlib.answers import extract_answer, format_number, is_correct, normalize_answer, parse_number


# --------------------------------------------------------------------------- #
# extract_answer
# --------------------------------------------------------------------------- #

EXTRACT_CASES = [
    # --- empty / missing ------------------------------------------------------
    pytest.param(None, None, id="none-input"),
    pytest.param("", None, id="empty-string"),
    pytest.param("   \n\t ", None, id="whitespace-only"),
    pytest.param("I am not sure how to solve this.", None, id="no-number"),
    pytest.param("[[ ]]", None, id="only-empty-brackets"),
    # --- [[x]] format ------------------------------------------------------------
    pytest.param("So 3 + 4 = 7. [[7]]", "7", id="brackets-simple"),
    pytest.param("[[ 1,234 ]]", "1234", id="brackets-thousands-and-spaces"),
    pytest.param("[[\n42\n]]", "42", id="brackets-multiline"),
    pytest.param("[[12]] and later [[13]]", "13", id="brackets-last-wins"),
    pytest.param("[[12]] so the final is [[ ]]", "12", id="brackets-empty-skipped"),
    pytest.param("[[ ]] then 5", "5", id="empty-brackets-fall-through"),
    pytest.param("The answer is [[B]]", "B", id="brackets-letter"),
    pytest.param("[[ B ]] since 3 > 2", "B", id="brackets-letter-stripped"),
    pytest.param("[[-5]]", "-5", id="brackets-negative"),
    pytest.param("[[\u22125]]", "-5", id="brackets-unicode-minus"),
    pytest.param("[[+5]]", "5", id="brackets-plus-dropped"),
    pytest.param("[[50%]]", "50", id="brackets-percent"),
    pytest.param("[[ 3/4 ]]", "0.75", id="brackets-fraction"),
    pytest.param("[[ 42. ]]", "42", id="brackets-trailing-period"),
    pytest.param("[[**42**]]", "42", id="brackets-markdown-bold"),
    pytest.param("[[ $18 per day ]]", "18", id="brackets-number-with-unit"),
    pytest.param(
        "[[42]]. So the answer is 42 apples, i.e. 40+2 and not 41",
        "42",
        id="answer-restated-after-brackets",
    ),
    pytest.param(
        "[[12]]\nDouble-check: 5 + 7 = 12, and 13 - 1 = 12 as well. Step 3 done.",
        "12",
        id="more-numbers-after-brackets",
    ),
    pytest.param(
        "Give your answer in the format [[50]].\nWe have 3 + 9 = 12, so the answer is [[12]].",
        "12",
        id="format-example-then-real-bracket-answer",
    ),
    # By the documented precedence, a [[x]] anywhere beats 'Answer: x'; an echoed
    # format example therefore wins over an un-bracketed final answer.
    pytest.param(
        "Give your answer in the format [[50]].\n3 + 4 = 7\nAnswer: 7",
        "50",
        id="format-example-beats-unbracketed-answer-by-spec",
    ),
    pytest.param("[[x^2]]", "x^2", id="brackets-expression-kept-as-text"),
    # --- \boxed{x} -------------------------------------------------------------
    pytest.param(r"so \boxed{3}", "3", id="boxed-simple"),
    pytest.param(r"\boxed{1,234}", "1234", id="boxed-thousands"),
    pytest.param(r"\boxed{12\%}", "12", id="boxed-latex-percent"),
    pytest.param(r"\boxed{{5}}", "5", id="boxed-nested-braces"),
    pytest.param(r"first \boxed{3} then \boxed{8}", "8", id="boxed-last-wins"),
    pytest.param(r"\boxed{\frac{1}{2}}", "0.5", id="boxed-latex-frac"),
    pytest.param(r"\boxed{\sqrt{2}}", r"\sqrt{2}", id="boxed-sqrt-not-2"),
    # --- Answer: x ---------------------------------------------------------------
    pytest.param("Answer: 42 apples", "42", id="answer-colon-with-unit"),
    pytest.param("ANSWER: 13", "13", id="answer-colon-uppercase"),
    pytest.param("Thus the answer is: -7.", "-7", id="answer-is-colon-negative"),
    pytest.param("**Answer:** 42", "42", id="answer-colon-markdown"),
    pytest.param("Answer:\n42", "42", id="answer-colon-newline"),
    pytest.param("Answer: $1,234.50", "1234.5", id="answer-colon-currency"),
    pytest.param("Answer: x = 5", "5", id="answer-colon-assignment"),
    pytest.param("Answer: 3\nWait, recheck.\nAnswer: 9", "9", id="answer-colon-last-line-wins"),
    pytest.param("Answer: 12.\n\nCheck: 5 + 7 = 12, 2 * 6 = 12. 100%", "12",
                 id="answer-colon-then-check-numbers"),
    pytest.param("Answer: 3 ... no wait. Answer: 9", "9", id="answer-colon-last-same-line"),
    pytest.param("Answer: 3 + 4 = 7", "7", id="answer-colon-equation"),
    # --- #### x ------------------------------------------------------------------
    pytest.param("#### 18", "18", id="hashes"),
    pytest.param("####18", "18", id="hashes-no-space"),
    pytest.param("#### 1,234", "1234", id="hashes-thousands"),
    pytest.param("#### 18\nthe 99 bottles", "18", id="hashes-beat-later-number"),
    # --- last number fallback --------------------------------------------------
    pytest.param("I bought 3 apples for $2 each, so I paid $6.", "6", id="several-numbers"),
    pytest.param("16-3-4=9", "9", id="hyphen-chain-last"),
    pytest.param("We compute 16-3", "3", id="hyphen-not-negative"),
    pytest.param("16 - 3 = 13, and 13 - 4 = 9", "9", id="subtraction-steps"),
    pytest.param("It costs 3-4 dollars", "4", id="range-hyphen"),
    pytest.param("pages 5\u20137", "7", id="range-en-dash"),
    pytest.param("It went from 5 to -5", "-5", id="negative-last"),
    pytest.param("The temperature fell to \u22125 degrees", "-5", id="unicode-minus"),
    pytest.param("x=-3", "-3", id="negative-after-equals"),
    pytest.param("-5", "-5", id="bare-negative"),
    pytest.param("+5", "5", id="plus-sign-dropped"),
    pytest.param("$1,234.50", "1234.5", id="currency-thousands-decimals"),
    pytest.param("The total is $12.50.", "12.5", id="currency-trailing-period"),
    pytest.param("-$5", "-5", id="negative-currency"),
    pytest.param("The discount is 50%", "50", id="percent"),
    pytest.param("The discount is 50 %", "50", id="percent-with-space"),
    pytest.param("Total: 1,000,000", "1000000", id="millions-separators"),
    pytest.param("5.0", "5", id="decimal-integer-canonical"),
    pytest.param("12.50", "12.5", id="decimal-trailing-zero"),
    pytest.param("0.50", "0.5", id="decimal-leading-zero"),
    pytest.param(".5", "0.5", id="bare-decimal"),
    pytest.param("-.5", "-0.5", id="negative-bare-decimal"),
    pytest.param("x = 3.14159", "3.14159", id="pi"),
    pytest.param("0.0", "0", id="zero-decimal"),
    pytest.param("-0", "0", id="negative-zero"),
    pytest.param("007", "7", id="leading-zeros"),
    pytest.param("42.", "42", id="trailing-period"),
    pytest.param("3.5.", "3.5", id="decimal-trailing-period"),
    pytest.param("The result is 7!", "7", id="exclamation"),
    pytest.param("3/4", "0.75", id="fraction"),
    pytest.param("1 / 2", "0.5", id="fraction-with-spaces"),
    pytest.param("It is 3/4 of 100, i.e. 75", "75", id="fraction-then-number"),
    pytest.param("1/0", None, id="division-by-zero-alone"),
    pytest.param("5/0 then 3", "3", id="division-by-zero-then-number"),
    pytest.param("item3 costs 5 dollars", "5", id="id-with-digit-before"),
    pytest.param("the total is 12 for user42", "12", id="id-with-digit-after"),
    pytest.param("step1: 4, step2: 8", "8", id="step-labels"),
    pytest.param("1,000,000,000", "1000000000", id="large-integer"),
    pytest.param("10000000000000000", "10000000000000000", id="large-integer-1e16"),
    pytest.param("12345678901234567890", "12345678901234567890", id="large-integer-20-digits"),
    pytest.param("123456789012.5", "123456789012.5", id="large-decimal"),
    pytest.param("0.00005", "0.00005", id="small-decimal"),
]


PRECEDENCE_CASES = [
    pytest.param("[[7]] Answer: 9", "7", id="brackets-beat-answer"),
    pytest.param("Answer: 9\n[[7]]", "7", id="brackets-beat-earlier-answer"),
    pytest.param(r"[[7]] \boxed{8}", "7", id="brackets-beat-boxed"),
    pytest.param("[[7]]\n#### 6\n99", "7", id="brackets-beat-hashes-and-number"),
    pytest.param(r"\boxed{3} Answer: 4", "3", id="boxed-beats-answer"),
    pytest.param(r"\boxed{3}\n#### 6", "3", id="boxed-beats-hashes"),
    pytest.param(r"\boxed{x} 5", "x", id="boxed-text-beats-number"),
    pytest.param("Answer: 5\n#### 6", "5", id="answer-beats-hashes"),
    pytest.param("#### 6\nAnswer: 5", "5", id="answer-beats-earlier-hashes"),
    pytest.param("Answer: 5 then 8 more", "5", id="answer-beats-last-number"),
    pytest.param("#### 6\nand 7 more", "6", id="hashes-beat-last-number"),
]


@pytest.mark.parametrize(("text", "expected"), EXTRACT_CASES + PRECEDENCE_CASES)
def test_extract_answer(text, expected):
    """What the one judge reads from an answer, and which form wins when several are present."""
    assert extract_answer(text) == expected


@pytest.mark.parametrize("text", ["1/0", "[[1/0]]", r"\boxed{1/0}", "Answer: 1/0", "#### 0/0", "x = 5/0."])
def test_division_by_zero_does_not_crash(text):
    result = extract_answer(text)
    assert result is None or isinstance(result, str)


# --------------------------------------------------------------------------- #
# is_correct
# --------------------------------------------------------------------------- #

IS_CORRECT_CASES = [
    pytest.param("5.0", "5", True, id="decimal-vs-int-string"),
    pytest.param("5", 5, True, id="gold-int"),
    pytest.param("5", 5.0, True, id="gold-float"),
    pytest.param(" 42. ", 42, True, id="padded-trailing-period"),
    pytest.param("0.5", "1/2", True, id="fraction-gold"),
    pytest.param("0.75", 0.75, True, id="float-gold-decimal"),
    pytest.param("0.33333", 1 / 3, True, id="within-tolerance-repeating"),
    pytest.param("1234", "1,234", True, id="thousands-separator"),
    pytest.param("12.5", "$12.50", True, id="currency-gold"),
    pytest.param("-5", "\u22125", True, id="unicode-minus-gold"),
    pytest.param("50", "50%", True, id="percent-stripped"),
    pytest.param("100", "100.005", True, id="relative-tolerance-inside"),
    pytest.param("100", "100.02", False, id="relative-tolerance-outside"),
    pytest.param("3", "3.001", False, id="close-but-wrong"),
    pytest.param("-5", "5", False, id="sign-matters"),
    pytest.param("0", "0", True, id="zero"),
    pytest.param("0", "0.001", False, id="zero-vs-small"),
    pytest.param(None, "5", False, id="none-prediction"),
    pytest.param(None, None, False, id="none-both"),
    pytest.param("", "5", False, id="empty-prediction"),
    pytest.param("B", "b", True, id="letter-case-insensitive"),
    pytest.param("abc", "ABC.", True, id="text-trailing-period"),
    pytest.param("abc", "abd", False, id="text-mismatch"),
    pytest.param("5", "five", False, id="number-vs-word"),
    pytest.param("42 apples", "42", True, id="number-with-unit"),
    pytest.param("1000000000", 1e9, True, id="large-float-gold"),
    pytest.param("0.000050001", 5e-05, True, id="small-float-gold-within-tolerance"),
]


@pytest.mark.parametrize(("prediction", "gold", "expected"), IS_CORRECT_CASES)
def test_is_correct(prediction, gold, expected):
    assert is_correct(prediction, gold) is expected


SYMMETRY_PAIRS = [
    ("5.0", "5"),
    ("0.5", "1/2"),
    ("1234", "1,234"),
    ("12.5", "$12.50"),
    ("-5", "\u22125"),
    ("100", "100.005"),
    ("100", "100.02"),
    ("3", "3.001"),
    ("-5", "5"),
    ("0", "0.001"),
    ("B", "b"),
    ("42 apples", "42"),
]


@pytest.mark.parametrize(("a", "b"), SYMMETRY_PAIRS)
def test_is_correct_symmetric(a, b):
    assert is_correct(a, b) == is_correct(b, a)


@pytest.mark.parametrize(
    ("text", "gold"),
    [
        ("so 3 + 4 = 7. Answer: [[ 1,234 ]]", "1234"),
        ("The total is $12.50.", 12.5),
        ("[[ 3/4 ]]", "0.75"),
        ("#### 18", 18),
        ("The temperature fell to \u22125 degrees", -5),
        pytest.param("0.00005", "0.0000500001"),
    ],
)
def test_extract_then_judge_roundtrip(text, gold):
    assert is_correct(extract_answer(text), gold)


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,234", 1234.0),
        ("12.50", 12.5),
        ("$5", 5.0),
        ("5%", 5.0),
        (" 42. ", 42.0),
        ("1/2", 0.5),
        ("-.5", -0.5),
        ("+3", 3.0),
        ("\u22123", -3.0),
        ("1/0", None),
        ("abc", None),
        ("", None),
        (None, None),
        ("3 apples", None),
    ],
)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.0, "0"), (-0.0, "0"), (5.0, "5"), (-3.0, "-3"), (12.5, "12.5"), (0.75, "0.75")],
)
def test_format_number(value, expected):
    assert format_number(value) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, None),
        ("   ", None),
        ("**42**", "42"),
        ("12.50", "12.5"),
        ("B.", "B"),
        ("$18 per day", "18"),
        ("The answer is B.", "The answer is B"),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(("text", "gold", "expected"), [
    ("Answer: 70001", "70000", False), ("[[999900]]", "1000000", False), ("[[1,000,000]]", "1000000", True),
    ("so [[5 + 3 = 8]]", "8", True), ("\\boxed{12 \\times 3 = 36}", "36", True),
    ("[[12345678901234567891]]", "12345678901234567890", False),
])
def test_review_regressions(text, gold, expected):
    assert is_correct(extract_answer(text), gold) is expected


@pytest.mark.parametrize("text, gold", [
    ("Answer: [[1e3]]", "1000"), ("[[1.5E3]]", "1500"), ("[[2.5e-2]]", "0.025"), ("[[1.2 x 10^3]]", "1200"),
    (r"\boxed{1.2 \times 10^{3}}", "1200"), ("so there are 3e5 grains", "300000"), ("[[1e3 dollars]]", "1000"),
])
def test_scientific_notation_is_the_number_it_means(text, gold):
    assert extract_answer(text) == gold and is_correct(extract_answer(text), "1000" if gold == "1000" else gold)


@pytest.mark.parametrize("text, answer", [("[[5e]]", "5"), ("item e5 costs 4", "4"), ("[[3 x 10]]", "3 x 10")])
def test_things_that_only_look_like_exponents_are_not(text, answer):
    assert extract_answer(text) == answer
