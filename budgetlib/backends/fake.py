"""A scripted backend for tests: every output is a pure function of
(prompt, max_new_tokens, temperature, seed, assistant_prefix), whatever the
batch, order or number of calls, so batched and sequential code paths can be
compared exactly. Tokens are whitespace-separated words."""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Sequence

from .base import Generation, PrefillUnsupported, check_request, prefixes_for

__all__ = ["FakeBackend", "Responder"]

# (prompt, max_new_tokens, temperature, seed, assistant_prefix) -> full answer text
Responder = Callable[[str, int, float, int, "str | None"], str]


def _hash_responder(prompt: str, max_new_tokens: int, temperature: float, seed: int,
                    assistant_prefix: str | None) -> str:
    digest = hashlib.sha256(f"{prompt}\x00{temperature}\x00{seed}\x00{assistant_prefix}".encode()).digest()
    n_words, answer = 3 + digest[0] % 40, digest[1]
    return " ".join(["step"] * n_words) + f" Answer: [[{answer}]]"


class FakeBackend:
    """`respond` maps one request to the full answer text (default: a hash of
    the request); the text is cut to `max_new_tokens` words, and then
    ``finish_reason`` is ``"length"``. `calls` records each batch of prompts."""

    def __init__(self, respond: Responder | None = None, *, model_id: str = "fake",
                 supports_prefix: bool = True):
        self.respond = respond or _hash_responder
        self.model_id = model_id
        self.supports_prefix = supports_prefix
        self.calls: list[list[str]] = []

    def identity(self) -> dict[str, Any]:
        return {"model": self.model_id, "revision": None, "backend": "fake"}

    def render(self, prompt: str, assistant_prefix: str | None = None) -> str:
        return f"<user>{prompt}</user><assistant>{assistant_prefix or ''}"

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                 seed: int = 0, assistant_prefix: str | Sequence[str] | None = None) -> list[Generation]:
        check_request(prompts, max_new_tokens, temperature)
        prefixes = prefixes_for(assistant_prefix, len(prompts))
        if not self.supports_prefix and any(p is not None for p in prefixes):
            raise PrefillUnsupported(f"backend {self.model_id!r} cannot prefill the assistant turn")
        self.calls.append(list(prompts))
        out = []
        for prompt, prefix in zip(prompts, prefixes):
            words = self.respond(prompt, max_new_tokens, temperature, seed, prefix).split()
            finish = "length" if len(words) > max_new_tokens else "stop"
            words = words[:max_new_tokens]
            out.append(Generation(" ".join(words), len(words), finish))
        return out
