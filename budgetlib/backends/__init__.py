"""Model runners behind one protocol: `HFBackend` (transformers),
`LlamaServerBackend` (llama.cpp's server, parallel slots), `OpenAIBackend`
(any OpenAI-compatible API), `FakeBackend` (tests), and `CachedBackend` (an
on-disk generation cache around any of them). `open_backend` picks one by
engine name, as the notebooks' settings say."""

from collections.abc import Mapping

from .base import Backend, Generation, PrefillUnsupported
from .cache import CachedBackend
from .fake import FakeBackend

__all__ = ["Backend", "Generation", "PrefillUnsupported", "CachedBackend", "FakeBackend", "HFBackend",
           "LlamaServerBackend", "open_backend", "ENGINES"]

ENGINES = ("hf", "llama-server")


def open_backend(model=None, *, engine: str | None = None, batch_size: int | None = None, progress: bool = True,
                 **options):
    """The backend a notebook's settings name: ``open_backend(SETTINGS)`` with a `profiles.profile`
    mapping (its ``model``, ``engine``, ``batch_size`` and ``backend_options``, e.g. the medium profile's
    ``rendering`` and ``stop``), or ``open_backend(model, engine=...)``.

    `engine="hf"`: `HFBackend(model, batch_size=..., progress=..., **options)` (``adapter=`` evaluates a
    LoRA adapter); `engine="llama-server"`: `LlamaServerBackend(model, parallel=batch_size, **options)`
    (`batch_size` is then the number of parallel slots; `progress` is not shown). Arguments given here
    win over the mapping's."""
    if isinstance(model, Mapping):
        settings = model
        model = settings.get("model")
        engine = engine or settings.get("engine")
        batch_size = batch_size or settings.get("batch_size")
        options = {**settings.get("backend_options", {}), **options}
    engine = engine or "hf"
    batch_size = batch_size or 16
    if engine == "hf":
        from .hf import HFBackend

        return HFBackend(model, batch_size=batch_size, progress=progress, **options)
    if engine == "llama-server":
        if options.get("adapter"):
            raise ValueError("engine 'llama-server' cannot load a peft LoRA adapter; use engine 'hf' for adapters")
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
