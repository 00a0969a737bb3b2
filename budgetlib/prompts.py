"""Immutable prompt templates and chat-template rendering.

Every method uses the same answer-format instruction so that one judge
(`budgetlib.answers`) reads every output. The wording follows TALE
(arXiv 2412.18547): vanilla CoT ends with "Let's think step by step:", the
budgeted prompt with "Let's think step by step and use less than {budget}
tokens:", and the zero-shot estimator prompt is TALE-EP's.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

__all__ = ["PromptTemplate", "ANSWER_FORMAT", "DIRECT", "VANILLA_COT", "BUDGETED_COT", "BUDGETED_COT_WORDS",
           "BUDGETED_COT_STRICT", "BUDGET_WORDINGS", "TALE_EP_ESTIMATE", "SELFBUDGETER", "COMPRESS_SOLUTION", "TEMPLATES", "ANSWER_CUE", "render_chat",
           "RENDERINGS", "ANSWER_CLOSE", "MAX_PLACEHOLDERS", "STOP_AT_ANSWER", "closes_answer", "DEFAULT_RENDERING", "TALE_SYSTEM", "chat_messages", "render_raw", "check_rendering"]

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
# Other wordings of the same budget, to see which one a model obeys when TALE's does not bind
# (notebooks 01 and 03): a budget in words, and a hard limit stated as an instruction.
BUDGETED_COT_WORDS = PromptTemplate(
    "budgeted_cot_words",
    "{question}\n" + ANSWER_FORMAT + "\nLet's think step by step and use less than {budget} words:\n",
)
BUDGETED_COT_STRICT = PromptTemplate(
    "budgeted_cot_strict",
    "{question}\n" + ANSWER_FORMAT + "\nThink step by step, but your whole response must be at most {budget} "
    "tokens long: write only the essential steps, then the answer.\n",
)
BUDGET_WORDINGS = {"tokens": BUDGETED_COT, "words": BUDGETED_COT_WORDS, "strict": BUDGETED_COT_STRICT}
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
# Self-compression of a training target (our extension, notebook 05's medium profile): the model rewrites its own
# correct solution briefly; the rewrite is kept only if it is shorter and still right. Fields {question}, {solution}.
COMPRESS_SOLUTION = ("Here is a math question and a correct step-by-step solution.\n\nQuestion: {question}\n\n"
                     "Solution:\n{solution}\n\nRewrite the solution as briefly as possible: keep only the calculations "
                     "needed to reach the answer, drop restatements and explanations, and end with the final answer "
                     "in the format [[answer]].")

# Budget forcing (s1's idea, our wording): when the reasoning reaches its budget, this is appended to it and
# the model writes only the answer after it, in the format every prompt asks for ("Answer: [[50]]").
ANSWER_CUE = "\n\nAnswer: [["
# Stop at the answer (`stop_at_answer=True` on the llama.cpp and vLLM backends): an answer ends at its first
# closed [[...]] that holds a digit; a placeholder such as "[[answer]]" (the format line's own words, which the
# 1.5B writes before its number in 8 of 64 GSM8K answers) does not end it. Our reading, not TALE's: under TALE's
# raw wrapper nothing ends the turn and the greedy 1.5B loops "[[end]]" after its answer to the token cap
# (LOG.md, 2026-12-06); TALE's code relies on a repetition penalty and sampling instead.
# An answer also ends at its third closed bracket (MAX_PLACEHOLDERS read past): a model that loops "[[answer]]"
# has no number to give. v1 is this rule in full (the guard was added before any v1 answer read past 2).
ANSWER_CLOSE = "]]"
MAX_PLACEHOLDERS = 2
STOP_AT_ANSWER = "first [[...]] holding a digit, v1"  # what a backend's identity records (bump when the rule changes)
_CLOSED_ANSWER = re.compile(r"\[\[([^\[\]]*)\]\]\s*$")


def closes_answer(text: str) -> bool:
    """Whether `text` ends with a closed ``[[...]]`` holding a digit: where `stop_at_answer` ends an answer.

    >>> closes_answer("so 16 - 7 = 9 [[9]]"), closes_answer("the result is [[answer]]"), closes_answer("[[1")
    (True, False, False)
    """
    m = _CLOSED_ANSWER.search(text)
    return bool(m and any(ch.isdigit() for ch in m.group(1)))

TEMPLATES = {t.name: t for t in (DIRECT, VANILLA_COT, BUDGETED_COT, BUDGETED_COT_WORDS, BUDGETED_COT_STRICT,
                                  TALE_EP_ESTIMATE, SELFBUDGETER)}


# How one user message becomes the model's input. TALE's official code wraps prompts for open models
# (served with vLLM) as a raw string, "You are a helpful assistant.\nUser: {prompt}\nAssistant:"
# (llm_models/__init__.py), and sends API models a system message "You are a helpful assistant." with the
# user message. A GGUF's chat template without a system message injects its own default (Qwen2.5: "You are
# Qwen, created by Alibaba Cloud. You are a helpful assistant."), which TALE never does.
TALE_SYSTEM = "You are a helpful assistant."
RENDERINGS = {
    "tale_raw": "TALE's wrapper for open models: no chat template, 'You are a helpful assistant.\\nUser: "
                "...\\nAssistant:'",
    "chat_helpful": "the chat template with TALE's system message 'You are a helpful assistant.'",
    "chat_default": "the chat template with no system message (the template's own default system prompt, if any)",
    "chat_empty": "the chat template with an empty system message",
}
# Our reading: the default stays the chat template as it is. TALE's raw wrapper makes the 135M smoke model
# answer with nothing (direct: 0 tokens, vanilla CoT: 30) and the embedded 0.5B ignore the budget; see LOG.md
# (2026-12-04) for the n = 64 comparison. Pick a rendering per run with the backends' `rendering=`.
DEFAULT_RENDERING = "chat_default"


def check_rendering(rendering: str) -> str:
    """`rendering` if it is one of `RENDERINGS`, else a ValueError naming the known ones."""
    if rendering not in RENDERINGS:
        raise ValueError(f"unknown rendering {rendering!r}; known: {', '.join(RENDERINGS)}")
    return rendering


def chat_messages(prompt: str, rendering: str = DEFAULT_RENDERING) -> list[dict[str, str]]:
    """The chat messages of one user message under a chat rendering (`tale_raw` has none)."""
    check_rendering(rendering)
    if rendering == "tale_raw":
        raise ValueError("rendering 'tale_raw' uses no chat template; use render_raw")
    system = {"chat_helpful": TALE_SYSTEM, "chat_empty": ""}.get(rendering)
    return ([] if system is None else [{"role": "system", "content": system}]) + [{"role": "user", "content": prompt}]


def render_raw(prompt: str, assistant_prefix: str | None = None) -> str:
    """TALE's raw wrapper for open models, then `assistant_prefix` (if any).

    >>> render_raw("1+1?")
    'You are a helpful assistant.\\nUser: 1+1?\\nAssistant:'
    """
    return f"{TALE_SYSTEM}\nUser: {prompt}\nAssistant:" + (assistant_prefix or "")


def render_chat(tokenizer, prompt: str, assistant_prefix: str | None = None,
                rendering: str = DEFAULT_RENDERING) -> str:
    """The full model input for one user message under `rendering`: TALE's raw
    wrapper, or the tokenizer's chat template (with the rendering's system
    message) and the generation prompt; then `assistant_prefix` (prefilled
    start of the assistant turn), if any."""
    if check_rendering(rendering) == "tale_raw":
        return render_raw(prompt, assistant_prefix)
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("this tokenizer has no chat template; use rendering='tale_raw' or a chat model")
    text = tokenizer.apply_chat_template(chat_messages(prompt, rendering), tokenize=False,
                                         add_generation_prompt=True)
    return text + (assistant_prefix or "")
