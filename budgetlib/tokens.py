"""Output-token counting with the model's own tokenizer, and dollar expense.

Counting convention (the one every method uses): output tokens are the tokens
the model generated, without the prompt, padding or end-of-sequence token.
Backends report this count themselves (`Generation.n_output_tokens`); use
`count_tokens` for text that did not come from a backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

__all__ = ["count_tokens", "Price", "PriceTable", "DEFAULT_PRICES", "expense"]


def count_tokens(tokenizer, text: str) -> int:
    """Number of tokens of `text` under `tokenizer`, without special tokens."""
    return len(tokenizer.encode(text, add_special_tokens=False))


@dataclass(frozen=True)
class Price:
    """US dollars per one million input and output tokens."""

    input_per_m: float
    output_per_m: float

    def __post_init__(self):
        if self.input_per_m < 0 or self.output_per_m < 0:
            raise ValueError(f"prices must be >= 0, got {self}")


@dataclass(frozen=True)
class PriceTable:
    """Per-model prices as published on `as_of`; `default` prices any model
    not in the table (None: unknown models are an error)."""

    as_of: str
    prices: Mapping[str, Price] = field(default_factory=dict)
    default: Price | None = None

    def __post_init__(self):
        object.__setattr__(self, "prices", MappingProxyType(dict(self.prices)))

    def price(self, model: str) -> Price:
        if model in self.prices:
            return self.prices[model]
        if self.default is not None:
            return self.default
        raise KeyError(f"no price for model {model!r} in the table of {self.as_of}; "
                       f"known: {sorted(self.prices)}; pass a PriceTable with a default "
                       "or use PriceTable.with_price")

    def with_price(self, model: str, input_per_m: float, output_per_m: float) -> "PriceTable":
        """A copy with one model's price set (the table itself never changes)."""
        return PriceTable(self.as_of, {**self.prices, model: Price(input_per_m, output_per_m)},
                          self.default)


# OpenAI list prices for the models TALE reports on, USD per 1M tokens.
# Local models (the embedded SmolLM2, any HF model) cost 0 by default.
DEFAULT_PRICES = PriceTable(
    as_of="2025-01-15",
    prices={
        "gpt-4o-mini": Price(0.15, 0.60),
        "gpt-4o": Price(2.50, 10.00),
    },
    default=Price(0.0, 0.0),
)


def expense(model: str, input_tokens: int, output_tokens: int,
            prices: PriceTable = DEFAULT_PRICES) -> float:
    """Dollar cost of `input_tokens` prompt and `output_tokens` generated tokens."""
    if input_tokens < 0 or output_tokens < 0:
        raise ValueError(f"token counts must be >= 0, got {input_tokens}, {output_tokens}")
    p = prices.price(model)
    return (input_tokens * p.input_per_m + output_tokens * p.output_per_m) / 1_000_000
