"""llama-cpp-python, loaded without CPU weight repacking and with greedy
answers that do not depend on earlier requests.

Two things in llama-cpp-python's defaults make a reproducible run impossible:

- **Weight repacking.** llama.cpp repacks some quantised weights (Q4_0, Q4_K,
  IQ4_NL, ...) into CPU-specific layouts through "extra buffer types". On some
  x86-64 CPUs (seen on an Intel Xeon with AVX512/AMX) loading a Q4_K_M GGUF
  that way crashed in the repacking path. `Llama` does not expose the switch
  (`llama_model_params.use_extra_bufts`), so `no_extra_bufts` sets it off
  while a model loads.
- **Cross-request KV reuse.** `Llama.generate` keeps the previous request's
  KV cache and evaluates only the part of a new prompt after the longest
  common prefix (for an identical prompt: its last token alone). A token
  evaluated alone or inside a batch of prompt tokens gets logits that differ
  in float rounding, so the same greedy request could answer differently
  depending on what ran before it (seen on an Intel Xeon: "The answer is 4."
  then "Two is a multiplicative" for the same prompt). `fresh_prompts` makes
  every generation start from an empty KV cache: each prompt is evaluated
  the same way whatever came before. It costs re-evaluating shared prefixes.

`load_llama` applies both to one model; `python -m
budgetlib.llama_cpp ...` runs llama-cpp-python's
OpenAI-compatible server with both (arguments as for ``python -m
llama_cpp.server``).
"""

from __future__ import annotations

import contextlib
import functools
import sys
from typing import Any, Iterator

__all__ = ["load_llama", "no_extra_bufts", "fresh_prompts", "main"]


@contextlib.contextmanager
def no_extra_bufts() -> Iterator[None]:
    """Every model loaded inside this block gets ``use_extra_bufts = False``."""
    import llama_cpp.llama_cpp as lib

    original = lib.llama_model_default_params

    def defaults():
        params = original()
        params.use_extra_bufts = False
        return params

    lib.llama_model_default_params = defaults
    try:
        yield
    finally:
        lib.llama_model_default_params = original


def _fresh(generate):
    @functools.wraps(generate)
    def wrapper(self, tokens, *args, reset: bool = True, **kwargs):
        if reset:
            self.reset()  # n_tokens = 0: no prefix match; eval() then drops every KV cell
        return generate(self, tokens, *args, reset=reset, **kwargs)

    wrapper.__budgetlib_fresh__ = True
    return wrapper


@contextlib.contextmanager
def fresh_prompts() -> Iterator[None]:
    """Inside this block every `Llama.generate` (and so every completion and
    chat completion) evaluates its whole prompt from an empty KV cache."""
    from llama_cpp import Llama

    original = Llama.generate
    if not getattr(original, "__budgetlib_fresh__", False):
        Llama.generate = _fresh(original)
    try:
        yield
    finally:
        Llama.generate = original


def load_llama(model_path: str, **kwargs: Any):
    """`llama_cpp.Llama(model_path, **kwargs)` with weight repacking off (its
    `model_params.use_extra_bufts` says so) and every generation starting
    from an empty KV cache (this instance only)."""
    from llama_cpp import Llama

    with no_extra_bufts():
        llm = Llama(model_path=str(model_path), **kwargs)
    if llm.model_params.use_extra_bufts:
        raise RuntimeError("llama-cpp-python ignored use_extra_bufts=False (a changed Llama.__init__?)")
    llm.generate = _fresh(Llama.generate).__get__(llm)
    return llm


def main(argv: list[str] | None = None) -> None:
    import runpy

    sys.argv = ["llama_cpp.server", *(sys.argv[1:] if argv is None else argv)]
    with no_extra_bufts(), fresh_prompts():
        runpy.run_module("llama_cpp.server", run_name="__main__")


if __name__ == "__main__":
    main()
