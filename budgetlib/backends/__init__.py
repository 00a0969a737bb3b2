"""Model runners behind one protocol: `HFBackend` (transformers),
`LlamaServerBackend` (llama.cpp's server, parallel slots), `OpenAIBackend`
(any OpenAI-compatible API), `VLLMBackend` (vLLM's offline engine), `FakeBackend` (tests), and `CachedBackend` (an
on-disk generation cache around any of them). `open_backend` picks one by
engine name, as the notebooks' settings say."""

import logging
import os
from collections.abc import Mapping

from .base import Backend, Generation, PrefillUnsupported
from .cache import CachedBackend
from .fake import FakeBackend

__all__ = ["Backend", "Generation", "PrefillUnsupported", "CachedBackend", "FakeBackend", "HFBackend",
           "LlamaServerBackend", "VLLMBackend", "open_backend", "pick_engine", "ENGINES"]

log = logging.getLogger(__name__)

ENGINES = ("hf", "llama-server", "vllm", "auto")


def open_backend(model=None, *, engine: str | None = None, batch_size: int | None = None, progress: bool = True,
                 **options):
    """The backend a notebook's settings name: ``open_backend(SETTINGS)`` with a `profiles.profile`
    mapping (its ``model``, ``engine``, ``batch_size`` and ``backend_options``, e.g. the medium profile's
    ``rendering`` and ``stop_at_answer``), or ``open_backend(model, engine=...)``.

    `engine="hf"`: `HFBackend(model, batch_size=..., progress=..., **options)` (``adapter=`` evaluates a
    LoRA adapter); `engine="llama-server"`: `LlamaServerBackend(model, parallel=batch_size, **options)`
    (`batch_size` is then the number of parallel slots; `progress` is not shown); `engine="vllm"`:
    `VLLMBackend(model, **options)` (continuous batching, no batch size); `engine="auto"` (the full profile):
    vllm when it is importable and a CUDA GPU is present, hf otherwise, printed (`pick_engine`). Arguments
    given here win over the mapping's."""
    if isinstance(model, Mapping):
        settings = model
        model = settings.get("model")
        engine = engine or settings.get("engine")
        batch_size = batch_size or settings.get("batch_size")
        options = {**settings.get("backend_options", {}), **options}
    engine = pick_engine(engine or "hf", options)
    batch_size = batch_size or 16
    if engine == "hf":
        from .hf import HFBackend

        return HFBackend(model, batch_size=batch_size, progress=progress, **options)
    if engine == "llama-server":
        if options.get("adapter"):
            raise ValueError("engine 'llama-server' cannot load a peft LoRA adapter; use engine 'hf' for adapters")
        from .llama_server import LlamaServerBackend

        return LlamaServerBackend("smollm2-135m" if model is None else model, parallel=batch_size, **options)
    if engine == "vllm":
        from .vllm_engine import VLLMBackend

        return VLLMBackend(model, **options)  # continuous batching: vLLM schedules every prompt itself
    raise ValueError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")


def pick_engine(engine: str, options: Mapping | None = None) -> str:
    """`engine`, with ``"auto"`` (the full profile's) resolved and logged: ``"vllm"`` when vllm is importable
    and a CUDA GPU is present (and no stacked adapters are asked for), else ``"hf"``."""
    if engine != "auto":
        return engine
    from .vllm_engine import cuda_available, vllm_available

    adapter = (options or {}).get("adapter")
    stacked = adapter is not None and not isinstance(adapter, (str, os.PathLike))
    if not vllm_available():
        picked, why = "hf", "vllm is not installed (pip install vllm on a CUDA machine)"
    elif not cuda_available():
        picked, why = "hf", "no CUDA GPU"
    elif stacked:
        picked, why = "hf", "stacked LoRA adapters (vLLM serves one)"
    else:
        picked, why = "vllm", "vllm is installed and a CUDA GPU is present"
    log.warning("engine 'auto' -> %s: %s", picked, why)
    print(f"engine 'auto' -> {picked}: {why}")
    return picked


def __getattr__(name):  # HFBackend imports torch: load it only when asked for
    if name == "HFBackend":
        from .hf import HFBackend

        return HFBackend
    if name == "VLLMBackend":
        from .vllm_engine import VLLMBackend

        return VLLMBackend
    if name == "LlamaServerBackend":
        from .llama_server import LlamaServerBackend

        return LlamaServerBackend
    raise AttributeError(name)
