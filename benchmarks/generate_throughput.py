"""Generated tokens per second of HFBackend at batch 1 and at larger batches.

Runs the same prompts (vanilla-CoT prompts of synthetic test questions) through
the same model at each batch size in one process, greedy, generation cache
off, and prints useful output tokens/s (generated tokens only: no prompt,
padding or end-of-sequence) and the ratio to batch 1. Appends one CSV row per
batch size, with machine, device and versions, to
results/benchmarks/generate_throughput.csv.

Cost on a 2-core CPU with the embedded model: about 3 minutes at the defaults.

    python benchmarks/generate_throughput.py [--n 32] [--batches 1 8 16 32] [--max-new-tokens 128] [--model ID]
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone

from budgetlib import data, prompts
from budgetlib.backends.hf import HFBackend
from budgetlib.paths import project_root
from budgetlib.runs import append_csv, environment_info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="number of prompts")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16, 32])
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--model", default=None, help="hub id or path (default: the embedded SmolLM2-135M)")
    args = ap.parse_args()

    backend = HFBackend(args.model, progress=False)
    questions = [prompts.VANILLA_COT.render(p.question) for p in data.load("synthetic", "test", limit=args.n)]
    backend.generate(questions[:2], max_new_tokens=8)  # warm-up
    env = environment_info()
    out = project_root() / "results" / "benchmarks" / "generate_throughput.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows, reference = [], None
    for batch in args.batches:
        backend.batch_size = batch
        t0 = time.perf_counter()
        gens = backend.generate(questions, max_new_tokens=args.max_new_tokens)
        seconds = time.perf_counter() - t0
        tokens = sum(g.n_output_tokens for g in gens)
        rate = tokens / seconds
        reference = reference or rate
        if batch == args.batches[0]:
            first_texts = [g.text for g in gens]
        same = sum(g.text == t for g, t in zip(gens, first_texts))
        row = {"timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "model": backend.model_id, "device": env["cuda"] or f"cpu ({env['cpu_count']} cores)",
               "dtype": backend.dtype, "n_prompts": len(questions), "max_new_tokens": args.max_new_tokens,
               "batch_size": batch, "output_tokens": tokens, "seconds": round(seconds, 2),
               "tokens_per_s": round(rate, 1), "reference_batch_size": args.batches[0], "ratio_vs_reference": round(rate / reference, 2),
               "identical_to_first_batch_size": f"{same}/{len(gens)}",
               "torch": env["versions"]["torch"], "transformers": env["versions"]["transformers"],
               "platform": env["platform"], "git_sha": env["git_sha"]}
        rows.append(row)
        print(f"batch {batch:>3}: {tokens} tokens in {seconds:6.1f} s = {rate:7.1f} tokens/s "
              f"(x{rate / reference:.2f} vs batch {args.batches[0]}; same text as batch {args.batches[0]}: {same}/{len(gens)})",
              flush=True)
    append_csv(out, rows)
    print(f"wrote {out}")
    print(json.dumps({"machine": env["platform"], "device": rows[0]["device"], "versions": env["versions"]}))


if __name__ == "__main__":
    main()
