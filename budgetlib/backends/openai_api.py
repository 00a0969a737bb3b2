"""Any OpenAI-compatible chat-completions server: hosted APIs, `vllm serve`,
llama.cpp's server.

The API key and base URL come from arguments or the environment
(`OPENAI_API_KEY`, `OPENAI_BASE_URL`), never from code. Requests run
concurrently up to `max_concurrency`; a 429, a 5xx, a timeout or a dropped
connection is retried with exponential backoff and jitter up to
`max_retries` times, then the call fails with a clear error (the `openai`
client's own retries are off so the two don't stack). Output tokens are the
server's `usage.completion_tokens`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from ..prompts import DEFAULT_RENDERING, chat_messages, check_rendering
from .base import Generation, PrefillUnsupported, check_request, prefixes_for

__all__ = ["OpenAIBackend", "BackendError"]

log = logging.getLogger(__name__)


class BackendError(RuntimeError):
    """A request that failed for good (after retries, or not retryable)."""


class OpenAIBackend:
    """`OpenAIBackend("gpt-4o-mini")`, or a local server:
    `OpenAIBackend("smollm2", base_url="http://127.0.0.1:8080/v1", api_key="local")`."""

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 max_concurrency: int = 8, max_retries: int = 5, timeout: float = 60.0,
                 backoff_base: float = 0.5, backoff_max: float = 30.0, rendering: str = DEFAULT_RENDERING):
        import openai

        if check_rendering(rendering) == "tale_raw":
            raise ValueError("OpenAIBackend talks to a chat endpoint: rendering 'tale_raw' needs a raw-text engine "
                             "(HFBackend or LlamaServerBackend)")
        self.rendering = rendering
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if not api_key:
            raise ValueError("no API key: set OPENAI_API_KEY or pass api_key= (any string for a local server)")
        if max_concurrency < 1 or max_retries < 0:
            raise ValueError(f"need max_concurrency >= 1 and max_retries >= 0, got {max_concurrency}, {max_retries}")
        self.model_id = model
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        self.max_concurrency, self.max_retries = max_concurrency, max_retries
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self._openai = openai
        self.client = openai.OpenAI(api_key=api_key, base_url=self.base_url, max_retries=0, timeout=timeout)
        self._rng = random.Random(0)

    def identity(self) -> dict[str, Any]:
        return {"model": self.model_id, "revision": None, "backend": "openai", "base_url": self.base_url,
                "rendering": self.rendering}

    def render(self, prompt: str, assistant_prefix: str | None = None) -> str:
        if assistant_prefix is not None:
            raise PrefillUnsupported("OpenAIBackend cannot prefill the assistant turn")
        return json.dumps(chat_messages(prompt, self.rendering))

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                 seed: int = 0, assistant_prefix: str | Sequence[str] | None = None) -> list[Generation]:
        check_request(prompts, max_new_tokens, temperature)
        if any(p is not None for p in prefixes_for(assistant_prefix, len(prompts))):
            raise PrefillUnsupported("OpenAIBackend cannot prefill the assistant turn; use HFBackend")
        if not prompts:
            return []
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(prompts))) as pool:
            return list(pool.map(lambda p: self._one(p, max_new_tokens, temperature, seed), prompts))

    def _retryable(self, exc: Exception) -> bool:
        o = self._openai
        return isinstance(exc, (o.RateLimitError, o.InternalServerError, o.APITimeoutError, o.APIConnectionError))

    def _one(self, prompt: str, max_new_tokens: int, temperature: float, seed: int) -> Generation:
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
                time.sleep(delay * (0.5 + self._rng.random()))  # jitter: 0.5x to 1.5x
            try:
                response = self.client.chat.completions.create(
                    model=self.model_id, messages=chat_messages(prompt, self.rendering),
                    max_tokens=max_new_tokens, temperature=temperature, seed=seed)
                return self._parse(response)
            except Exception as exc:
                if not self._retryable(exc):
                    if isinstance(exc, BackendError):
                        raise
                    raise BackendError(f"{self.base_url} ({self.model_id}): request failed: "
                                       f"{type(exc).__name__}: {exc}") from exc
                last = exc
                log.warning("%s: attempt %d failed (%s), retrying", self.base_url, attempt + 1, type(exc).__name__)
        raise BackendError(f"{self.base_url} ({self.model_id}): gave up after {self.max_retries + 1} attempts; "
                           f"last error {type(last).__name__}: {last}") from last

    def _parse(self, response: Any) -> Generation:
        try:
            choice = response.choices[0]
            text = choice.message.content or ""
            tokens = response.usage.completion_tokens
        except (AttributeError, IndexError, TypeError) as exc:
            raise BackendError(f"{self.base_url}: malformed chat completion (no choices/usage): {response!r:.300}") from exc
        if not isinstance(tokens, int) or tokens < 0:
            raise BackendError(f"{self.base_url}: usage.completion_tokens missing or invalid: {tokens!r}")
        return Generation(text, tokens, "length" if choice.finish_reason == "length" else "stop")
