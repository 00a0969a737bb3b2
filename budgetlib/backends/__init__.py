"""Model runners behind one protocol: `HFBackend` (transformers),
`LlamaServerBackend` (llama.cpp's server, parallel slots), `OpenAIBackend`
(any OpenAI-compatible API), `FakeBackend` (tests), and `CachedBackend` (an
on-disk generation cache around any of them). `open_backend` picks one by
engine name, as the notebooks' settings say."""

from .base import Backend, Generation, PrefillUnsupported
from .cache import CachedBackend
from .fake import FakeBackend

__all__ = ["Backend", "Generation", "PrefillUnsupported", "CachedBackend", "FakeBackend", "HFBackend",
           "LlamaServerBackend", "open_backend", "ENGINES"]

ENGINES = ("hf", "llama-server")


def open_backend(model=None, *, engine: str = "hf", batch_size: int = 16, progress: bool = True, **options):
    """`engine="hf"`: `HFBackend(model, batch_size=..., progress=..., **options)`;
    `engine="llama-server"`: `LlamaServerBackend(model, parallel=batch_size, **options)`
    (`batch_size` is then the number of parallel slots; `progress` is not shown)."""
    if engine == "hf":
        from .hf import HFBackend

        return HFBackend(model, batch_size=batch_size, progress=progress, **options)
    if engine == "llama-server":
        from .llama_server import LlamaServerBackend

        return LlamaServerBackend("smollm2-135m" if model is None else model, parallel=batch_size, **options)
    raise ValueError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")


def __getattr__(name):  # HFBackend imports torch: load it only when asked for
    if name == "HFBackend":
        from .hf import HFBackend

        return HFBackend
    if name == "LlamaServerBackend":
        from .llama_server import LlamaServerBackend

        return LlamaServerBackend
    raise AttributeError(name)
