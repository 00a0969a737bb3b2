"""Immutable prompt templates and chat-template rendering.

Every method uses the same answer-format instruction so that one judge
(`budgetlib.answers`) reads every output. The wording follows TALE
(arXiv 2412.18547): vanilla CoT ends with "Let's think step by step:", the
budgeted prompt with "Let's think step by step and use less than {budget}
tokens:", and the zero-shot estimator prompt is TALE-EP's.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

__all__ = ["PromptTemplate", "ANSWER_FORMAT", "DIRECT", "VANILLA_COT", "BUDGETED_COT",
           "TALE_EP_ESTIMATE", "SELFBUDGETER", "TEMPLATES", "render_chat"]

ANSWER_FORMAT = ("Please give the response by strictly following this format: [[answer]], "
                 "for example: Answer: [[50]].")


@dataclass(frozen=True)
class PromptTemplate:
    """A named user-message template with `{question}` and optionally `{budget}`."""

    name: str
    text: str

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(f for _, f, _, _ in string.Formatter().parse(self.text) if f)

    @property
    def needs_budget(self) -> bool:
        return "budget" in self.fields

    def render(self, question: str, budget: int | None = None) -> str:
        """The user message for `question` (and `budget`, for budgeted templates)."""
        if self.needs_budget:
            if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
                raise ValueError(f"prompt {self.name!r} needs a positive integer budget, got {budget!r}")
            return self.text.format(question=question, budget=budget)
        if budget is not None:
            raise ValueError(f"prompt {self.name!r} takes no budget, got {budget!r}")
        return self.text.format(question=question)


DIRECT = PromptTemplate(
    "direct",
    "{question}\nPlease answer the question directly without any reasoning process. " + ANSWER_FORMAT,
)
VANILLA_COT = PromptTemplate("vanilla_cot", "{question}\n" + ANSWER_FORMAT + "\nLet's think step by step:\n")
BUDGETED_COT = PromptTemplate(
    "budgeted_cot",
    "{question}\n" + ANSWER_FORMAT + "\nLet's think step by step and use less than {budget} tokens:\n",
)
TALE_EP_ESTIMATE = PromptTemplate(
    "tale_ep_estimate",
    "Task: Analyze the given question and estimate the minimum number of tokens required to "
    "generate a complete and accurate response. Please give the response by strictly following "
    "this format: [[budget]], for example, Budget: [[12]].\n\nBelow is the question:\n\n"
    'Question: "{question}"\n',
)
SELFBUDGETER = PromptTemplate(
    "selfbudgeter",
    "{question}\nFirst estimate how many tokens your solution needs and write it as "
    "<budget>N</budget>. Then solve the problem within that budget inside "
    "<solution>...</solution>, ending with the final answer as [[answer]].",
)

TEMPLATES = {t.name: t for t in (DIRECT, VANILLA_COT, BUDGETED_COT, TALE_EP_ESTIMATE, SELFBUDGETER)}


def render_chat(tokenizer, prompt: str, assistant_prefix: str | None = None) -> str:
    """The full model input for one user message: the tokenizer's chat
    template with the generation prompt, then `assistant_prefix` (prefilled
    start of the assistant turn), if any."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("this tokenizer has no chat template; budgetlib sends chat prompts")
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    return text + (assistant_prefix or "")
