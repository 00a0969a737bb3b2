"""llama-cpp-python, loaded without CPU weight repacking.

llama.cpp repacks some quantised weights (Q4_0, Q4_K, IQ4_NL, ...) into
CPU-specific layouts through "extra buffer types". On some x86-64 CPUs
(seen on an Intel Xeon with AVX512/AMX) loading a Q4_K_M GGUF that way
crashed in the repacking path. llama-cpp-python's `Llama` does not expose the
switch (`llama_model_params.use_extra_bufts`), so `load_llama` sets it off
while the model loads; `python -m budgetlib.backends.llama_cpp_python ...`
runs llama-cpp-python's OpenAI-compatible server the same way (arguments as
for ``python -m llama_cpp.server``).
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator

__all__ = ["load_llama", "no_extra_bufts", "main"]


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


def load_llama(model_path: str, **kwargs: Any):
    """`llama_cpp.Llama(model_path, **kwargs)` with weight repacking off; its
    `model_params.use_extra_bufts` says so."""
    from llama_cpp import Llama

    with no_extra_bufts():
        llm = Llama(model_path=str(model_path), **kwargs)
    if llm.model_params.use_extra_bufts:
        raise RuntimeError("llama-cpp-python ignored use_extra_bufts=False (a changed Llama.__init__?)")
    return llm


def main(argv: list[str] | None = None) -> None:
    import runpy

    sys.argv = ["llama_cpp.server", *(sys.argv[1:] if argv is None else argv)]
    with no_extra_bufts():
        runpy.run_module("llama_cpp.server", run_name="__main__")


if __name__ == "__main__":
    main()
