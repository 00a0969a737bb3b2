"""Generated tokens/s of HF `generate` and vLLM on the same prompts: the full profile's engine choice, measured.

Both engines get the same `--n` prompts (random token ids, `--prompt-tokens` each, seed 0) and decode
exactly `--new-tokens` tokens per prompt (end tokens ignored), greedy, so the work is identical and the
ratio is throughput alone. The model is `--model` (a local safetensors directory) or, where no weights can be
had (the lent GPU machines reach no hub and take at most 64 MiB of files), the Qwen2.5-1.5B-Instruct
architecture with random weights (`--dummy`, the default without `--model`): the speed of a forward pass does
not depend on the weights' values, the answers do, so this measures speed only, never accuracy.

HF runs in batches of `--hf-batch` (left padding, the way `HFBackend` batches); vLLM gets every prompt in one
call (continuous batching, as `VLLMBackend`). vLLM is skipped, with the reason, when it is not importable.
Prints one JSON line per engine and appends rows to results/benchmarks/engine_throughput.csv.

    python benchmarks/engine_throughput.py --n 64 --new-tokens 256            # on a CUDA GPU (bf16)
    python benchmarks/engine_throughput.py --tiny --n 4 --new-tokens 8        # a CPU check that it runs
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

# Qwen2.5-1.5B-Instruct's architecture (its config.json's sizes)
QWEN15 = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
              num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0,
              tie_word_embeddings=True, rms_norm_eps=1e-6, torch_dtype="bfloat16")
TINY = dict(QWEN15, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=1024)


def _config_dir(sizes: dict) -> Path:
    from transformers import Qwen2Config

    path = Path(tempfile.mkdtemp(prefix="engine-throughput-"))
    Qwen2Config(**sizes, architectures=["Qwen2ForCausalLM"]).save_pretrained(path)
    return path


def _prompts(n: int, length: int, vocab: int) -> list[list[int]]:
    import torch

    gen = torch.Generator().manual_seed(0)
    return torch.randint(100, vocab - 100, (n, length), generator=gen).tolist()


def run_hf(model_dir: Path, dummy: bool, prompts, new_tokens: int, batch: int, dtype: str) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = getattr(torch, dtype)
    if dummy:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir), dtype=torch_dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype, use_safetensors=True)
    model = model.to(device).eval()
    pad = 0
    generated = 0
    start = time.perf_counter()
    for i in range(0, len(prompts), batch):
        rows = prompts[i:i + batch]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)
        generated += (out.shape[1] - width) * len(rows)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"engine": f"hf(batch {batch})", "device": device, "tokens": generated, "seconds": round(seconds, 2),
            "tokens_per_s": round(generated / seconds, 1), "peak_gib": None if peak is None else round(peak, 2)}


def run_vllm(model_dir: Path, dummy: bool, prompts, new_tokens: int, dtype: str, gpu_memory_utilization: float) -> dict:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return {"engine": "vllm", "skipped": "vllm is not importable here"}
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(model_dir), load_format="dummy" if dummy else "auto", skip_tokenizer_init=True,
              dtype=dtype, enable_prefix_caching=True, gpu_memory_utilization=gpu_memory_utilization,
              max_model_len=max(len(p) for p in prompts) + new_tokens + 16, trust_remote_code=False)
    params = SamplingParams(max_tokens=new_tokens, min_tokens=new_tokens, temperature=0.0, ignore_eos=True,
                            detokenize=False)
    llm.generate([{"prompt_token_ids": p} for p in prompts[:2]], params, use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    seconds = time.perf_counter() - start
    generated = sum(len(o.outputs[0].token_ids) for o in outs)
    import torch

    return {"engine": "vllm", "device": "cuda" if torch.cuda.is_available() else "cpu", "tokens": generated, "seconds": round(seconds, 2),
            "tokens_per_s": round(generated / seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a local safetensors model directory (default: --dummy)")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer stand-in: checks the script on a CPU")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--hf-batch", type=int, default=64)
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.8)
    ap.add_argument("--engines", nargs="+", default=["hf", "vllm"], choices=["hf", "vllm"])
    ap.add_argument("--csv", default="results/benchmarks/engine_throughput.csv")
    args = ap.parse_args()
    import torch

    dtype = args.dtype or ("bfloat16" if torch.cuda.is_available() else "float32")
    dummy = args.model is None
    model_dir = _config_dir(TINY if args.tiny else QWEN15) if dummy else Path(args.model)
    vocab = (TINY if args.tiny else QWEN15)["vocab_size"] if dummy else 32000
    prompts = _prompts(args.n, args.prompt_tokens, vocab)
    rows = []
    for engine in args.engines:
        row = (run_hf(model_dir, dummy, prompts, args.new_tokens, args.hf_batch, dtype) if engine == "hf" else
               run_vllm(model_dir, dummy, prompts, args.new_tokens, dtype, args.gpu_memory_utilization))
        row.update(model=str(args.model or ("tiny stand-in" if args.tiny else "Qwen2.5-1.5B architecture, random weights")),
                   n=args.n, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, dtype=dtype,
                   gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
                   when=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        rows.append(row)
        print(json.dumps(row), flush=True)
    done = [r for r in rows if "tokens_per_s" in r]
    if len(done) == 2:
        print(f"vllm / hf: {done[1]['tokens_per_s'] / done[0]['tokens_per_s']:.2f}x")
    out = Path(args.csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    fields = sorted({k for r in rows for k in r})
    new = not out.exists()
    with out.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
