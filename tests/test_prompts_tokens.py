import dataclasses

import pytest

from budgetlib import prompts, tokens


def test_tale_wording():
    text = prompts.BUDGETED_COT.render("Q?", 42)
    assert text.startswith("Q?\n") and text.endswith("Let's think step by step and use less than 42 tokens:\n")
    assert prompts.VANILLA_COT.render("Q?").endswith("Let's think step by step:\n")
    assert "[[answer]]" in prompts.DIRECT.render("Q?") and "step by step" not in prompts.DIRECT.render("Q?")
    assert "[[budget]]" in prompts.TALE_EP_ESTIMATE.render("Q?") and 'Question: "Q?"' in prompts.TALE_EP_ESTIMATE.render("Q?")
    assert "<budget>N</budget>" in prompts.SELFBUDGETER.render("Q?")


def test_budget_validation_and_immutability():
    for bad in (0, -3, 2.5, None, True):
        with pytest.raises(ValueError, match="positive integer budget"):
            prompts.BUDGETED_COT.render("Q", bad)
    with pytest.raises(ValueError, match="takes no budget"):
        prompts.VANILLA_COT.render("Q", 10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        prompts.VANILLA_COT.text = "x"
    assert prompts.TEMPLATES["budgeted_cot"].needs_budget and not prompts.TEMPLATES["direct"].needs_budget


def test_question_with_braces_is_safe():
    assert prompts.VANILLA_COT.render("f(x) = {x} + 1?").startswith("f(x) = {x} + 1?")


def test_expense_and_price_table():
    assert tokens.expense("gpt-4o-mini", 1_000_000, 1_000_000) == pytest.approx(0.75)
    assert tokens.expense("gpt-4o-mini", 0, 461) == pytest.approx(461 * 0.60 / 1e6)
    assert tokens.expense("my-local-model", 10_000, 10_000) == 0.0
    strict = tokens.PriceTable("2026-01-01", {"m": tokens.Price(1.0, 2.0)})
    with pytest.raises(KeyError, match="no price for model 'x'"):
        tokens.expense("x", 1, 1, strict)
    custom = strict.with_price("x", 3.0, 4.0)
    assert tokens.expense("x", 1_000_000, 500_000, custom) == pytest.approx(5.0)
    assert "x" not in strict.prices  # the original table is unchanged
    with pytest.raises(ValueError):
        tokens.Price(-1, 0)
    with pytest.raises(ValueError):
        tokens.expense("gpt-4o", -1, 0)


def test_count_tokens_uses_the_tokenizer():
    class WordTokenizer:
        def encode(self, text, add_special_tokens=True):
            return ([0] if add_special_tokens else []) + [1] * len(text.split())

    assert tokens.count_tokens(WordTokenizer(), "one two three") == 3
