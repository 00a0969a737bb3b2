"""Model runners behind one protocol: `HFBackend` (transformers), `FakeBackend`
(tests), and `CachedBackend` (an on-disk generation cache around either)."""

from .base import Backend, Generation, PrefillUnsupported
from .cache import CachedBackend
from .fake import FakeBackend

__all__ = ["Backend", "Generation", "PrefillUnsupported", "CachedBackend", "FakeBackend", "HFBackend"]


def __getattr__(name):  # HFBackend imports torch: load it only when asked for
    if name == "HFBackend":
        from .hf import HFBackend

        return HFBackend
    raise AttributeError(name)
