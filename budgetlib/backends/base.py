"""The `Backend` protocol every model runner implements, and `Generation`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Protocol, Sequence, runtime_checkable

__all__ = ["Generation", "Backend", "check_request", "prefixes_for", "in_order", "PrefillUnsupported", "generate_in_batches",
           "Request", "generate_flow", "generate_in_rounds"]

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class Generation:
    """One model output. `text` is the continuation only (without the prompt
    or any `assistant_prefix`); `n_output_tokens` counts generated tokens only:
    no prompt, no padding, no end-of-sequence token. `finish_reason` is
    ``"stop"`` (the model ended its turn) or ``"length"`` (hit max_new_tokens)."""

    text: str
    n_output_tokens: int
    finish_reason: FinishReason


class PrefillUnsupported(NotImplementedError):
    """Raised by a backend that cannot prefill the assistant turn."""


@runtime_checkable
class Backend(Protocol):
    """Generates answers to user messages; the backend applies the chat template.

    `assistant_prefix` prefills the start of the assistant turn: one string
    for every prompt, or one per prompt.
    """

    model_id: str

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                 seed: int = 0, assistant_prefix: str | Sequence[str] | None = None) -> list[Generation]:
        ...

    def identity(self) -> dict[str, Any]:
        """What determines this backend's outputs besides the request: model,
        revision, dtype, device. Used for cache keys and run metadata."""
        ...

    def render(self, prompt: str, assistant_prefix: str | None = None) -> str:
        """The exact model input text for one prompt."""
        ...


def check_request(prompts: Sequence[str], max_new_tokens: int, temperature: float) -> None:
    """Reject malformed generate() arguments with a clear error."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of strings, not one string")
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise TypeError(f"prompts must be strings; item {bad[0]} is {type(prompts[bad[0]]).__name__}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")


def in_order(pairs: Iterable[tuple[int, Generation]], n: int) -> list[Generation]:
    """The generations of ``(index, generation)`` pairs (a backend's ``generate_each``), in index order."""
    out: list[Generation | None] = [None] * n
    for i, g in pairs:
        out[i] = g
    missing = [i for i, g in enumerate(out) if g is None]
    if missing:
        raise RuntimeError(f"no generation for prompt {missing[0]} ({len(missing)} of {n} missing)")
    return out  # type: ignore[return-value]


def prefixes_for(assistant_prefix: str | Sequence[str] | None, n: int) -> list[str | None]:
    """One assistant prefix (or None) per prompt."""
    if assistant_prefix is None or isinstance(assistant_prefix, str):
        return [assistant_prefix] * n
    prefixes = list(assistant_prefix)
    if len(prefixes) != n:
        raise ValueError(f"got {len(prefixes)} assistant prefixes for {n} prompts")
    return prefixes


def generate_in_batches(backend: Backend, prompts: Sequence[str], *, max_new_tokens: int,
                        batch_size: int | None = None, assistant_prefix: str | None = None,
                        temperature: float = 0.0, seed: int = 0) -> list[Generation]:
    """`backend.generate` in calls of at most `batch_size` prompts (None: one
    call), checking that every call returns one generation per prompt."""
    out: list[Generation] = []
    step = batch_size or max(len(prompts), 1)
    for start in range(0, len(prompts), step):
        chunk = list(prompts[start:start + step])
        gens = backend.generate(chunk, max_new_tokens=max_new_tokens, assistant_prefix=assistant_prefix,
                                temperature=temperature, seed=seed)
        if len(gens) != len(chunk):
            raise RuntimeError(f"backend {backend.model_id!r} returned {len(gens)} generations for "
                               f"{len(chunk)} prompts")
        out.extend(gens)
    return out


@dataclass(frozen=True)
class Request:
    """One greedy request of a flow (`generate_flow`): `tag` names it to the caller's callback."""

    tag: Any
    prompt: str
    assistant_prefix: str | None = None


def generate_flow(backend: Backend, requests: Sequence[Request], follow: Callable[[Any, Generation], Sequence[Request]],
                  *, max_new_tokens: int, batch_size: int | None = None) -> int:
    """Greedy answers to `requests` and to every request that depends on an
    earlier answer: when a request's generation exists, ``follow(tag,
    generation)`` returns the requests it leads to (a search's next budget),
    and those are generated too, until none are left. Returns the number of
    backend calls (0 for a backend that schedules the flow itself).

    A backend with its own ``generate_flow(requests, follow, *, max_new_tokens,
    batch_size)`` runs it and returns its count (`HFBackend`: continuous
    batching, a follow-up joins the running batch as soon as a slot is free;
    `CachedBackend`: answers it has, the rest from the backend it wraps).
    Any other backend runs it in rounds:
    every waiting request in one `generate` call (or calls of at most
    `batch_size`), then the follow-ups of all of them. Either way each answer
    is the backend's greedy answer to its request, so the results are the same
    up to batch-dependent float rounding."""
    own = getattr(backend, "generate_flow", None)
    if own is not None:
        return own(list(requests), follow, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return generate_in_rounds(backend, requests, follow, max_new_tokens=max_new_tokens, batch_size=batch_size)


def generate_in_rounds(backend: Backend, requests: Sequence[Request],
                       follow: Callable[[Any, Generation], Sequence[Request]], *, max_new_tokens: int,
                       batch_size: int | None = None) -> int:
    """`generate_flow` in rounds of `backend.generate` calls, whatever flow the backend has of its own (the
    fallback of a backend that cannot run it continuously). Returns the number of calls."""
    calls, waiting = 0, list(requests)
    while waiting:
        step = batch_size or len(waiting)
        following: list[Request] = []
        for start in range(0, len(waiting), step):
            chunk = waiting[start:start + step]
            prefixes = [r.assistant_prefix for r in chunk]
            gens = backend.generate([r.prompt for r in chunk], max_new_tokens=max_new_tokens,
                                    assistant_prefix=None if all(p is None for p in prefixes) else prefixes)
            calls += 1
            if len(gens) != len(chunk):
                raise RuntimeError(f"backend {backend.model_id!r} returned {len(gens)} generations for "
                                   f"{len(chunk)} prompts")
            for r, g in zip(chunk, gens):
                following.extend(follow(r.tag, g))
        waiting = following
    return calls
