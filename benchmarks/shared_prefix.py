"""Shared-prefix prefill vs the plain batched path, in one process.

A budget sweep asks each question at several budgets; the prompts differ only
in the budget number near the end. `HFBackend(shared_prefix=True)` encodes
the common token prefix once per batch (budgetlib.backends.prefix_cache).
This benchmark times both paths on the same prompts, interleaved (plain and
shared alternate, first one then the other, `--repeats` times; the median is
reported), generation cache off, for four workloads:

- ``short/sweep``: the zero-shot budgeted-CoT prompt (~90 tokens), each
  question at every budget of the sweep (one question's candidates share ~85%
  of their tokens);
- ``long/sweep``: the same with a few-shot block in front (~`--shots-tokens`
  tokens of GSM8K train worked examples from the local data dir, else
  synthetic train examples);
- ``short/distinct`` and ``long/distinct``: one prompt per question, as in one
  round of the round-by-round search: only the chat template's opening
  (short) or the few-shot block (long) is shared.

For each it prints the prefill time (``max_new_tokens=1``), the full
generation time (``--max-new-tokens``), their plain/shared ratios (> 1: shared
is faster), the prompt tokens each path ran through the model and how many
generations are identical. Appends one CSV row per workload (machine, device,
threads, versions) to results/benchmarks/shared_prefix.csv. Runs on CUDA when
a GPU is present (or `--device`). Timings on a shared machine are noisy.

Cost on a 2-core CPU with the embedded model at the defaults, one torch
thread: about 6 minutes.

    python benchmarks/shared_prefix.py [--short-questions 8] [--long-questions 2] [--budgets 256 128 64 32 16 8]
        [--max-new-tokens 32] [--shots-tokens 1200] [--repeats 2] [--batch-size 16] [--model ID] [--device DEV]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from datetime import datetime, timezone

from budgetlib import data, prompts
from budgetlib.backends.hf import HFBackend
from budgetlib.paths import data_dirs, project_root
from budgetlib.runs import append_csv, environment_info


def few_shot_block(tokenizer, target_tokens: int) -> tuple[str, str]:
    """Worked examples ("Question: ...\\nAnswer: ... [[x]]") up to about
    `target_tokens` tokens, and where they came from."""
    examples, source = [], "synthetic train"
    for root in data_dirs():
        path = root / "gsm8k" / "train.jsonl"
        if path.is_file():
            with path.open(encoding="utf-8") as f:
                for line in f:
                    row = json.loads(line)
                    steps, _, gold = row["answer"].rpartition("####")
                    steps = re.sub(r"<<[^>]*>>", "", steps).strip()
                    examples.append(f"Question: {row['question']}\nAnswer: {steps} [[{gold.strip()}]]")
                    if len(examples) >= 200:
                        break
            source = f"gsm8k train ({path})"
            break
    if not examples:
        examples = [f"Question: {p.question}\nAnswer: [[{p.answer}]]" for p in data.load("synthetic", "train",
                                                                                           limit=400)]
    block, n = [], 0
    for ex in examples:
        if n >= target_tokens:
            break
        block.append(ex)
        n += len(tokenizer(ex + "\n\n", add_special_tokens=False).input_ids)
    return "Solved examples:\n\n" + "\n\n".join(block) + "\n\nNow the question to solve.\nQuestion: ", source


def timed(backend, batch, max_new_tokens, shared):
    import torch

    if backend.device.startswith("cuda"):
        torch.cuda.synchronize()
    backend.prefill_stats.reset()
    t0 = time.perf_counter()
    gens = backend.generate(batch, max_new_tokens=max_new_tokens, shared_prefix=shared)
    if backend.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0, gens, backend.prefill_stats.prompt_tokens


def compare(backend, batch, max_new_tokens, repeats):
    """Median seconds of plain and shared (interleaved, alternating which goes
    first), prompt tokens each ran, and the share of identical generations."""
    times = {False: [], True: []}
    outputs, tokens = {}, {}
    for rep in range(repeats):
        for shared in ((False, True) if rep % 2 == 0 else (True, False)):
            seconds, gens, n_tokens = timed(backend, batch, max_new_tokens, shared)
            times[shared].append(seconds)
            outputs[shared], tokens[shared] = gens, n_tokens
    same = sum(a == b for a, b in zip(outputs[False], outputs[True])) / len(batch)
    return statistics.median(times[False]), statistics.median(times[True]), tokens[False], tokens[True], same


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--short-questions", type=int, default=8)
    ap.add_argument("--long-questions", type=int, default=2)
    ap.add_argument("--budgets", type=int, nargs="+", default=[256, 128, 64, 32, 16, 8])
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--shots-tokens", type=int, default=1200, help="size of the few-shot block of long prompts")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workloads", nargs="+", default=["short/sweep", "long/sweep", "short/distinct",
                                                          "long/distinct"])
    ap.add_argument("--model", default=None, help="hub id or path (default: the embedded SmolLM2-135M)")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()

    env = environment_info()
    backend = HFBackend(args.model, device=args.device, batch_size=args.batch_size, progress=False)
    shots, shots_source = few_shot_block(backend.tokenizer, args.shots_tokens)
    questions = [p.question for p in data.load("synthetic", "test", limit=max(args.short_questions,
                                                                              args.long_questions))]
    backend.generate(["warm-up", "warm-up too"], max_new_tokens=2)
    backend.generate(["warm-up", "warm-up too"], max_new_tokens=2, shared_prefix=True)

    def workload(name):
        kind, shape = name.split("/")
        qs = questions[:args.short_questions] if kind == "short" else [shots + q for q in
                                                                       questions[:args.long_questions]]
        if shape == "sweep":  # question by question, as budgetlib.elasticity sends them
            return [prompts.BUDGETED_COT.render(q, b) for q in qs for b in args.budgets]
        return [prompts.BUDGETED_COT.render(q, args.budgets[len(args.budgets) // 2]) for q in qs]

    out = project_root() / "results" / "benchmarks" / "shared_prefix.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    device = env["cuda"] or f"cpu ({env['cpu_count']} cores)"
    print(f"{backend.model_id} on {device}, {torch.get_num_threads()} torch threads, batch {args.batch_size}; "
          f"few-shot block from {shots_source}; ratios are plain / shared (> 1: shared is faster)")
    for name in args.workloads:
        batch = workload(name)
        lengths = [len(backend.tokenizer(backend.render(p), add_special_tokens=False).input_ids) for p in batch]
        pre_plain, pre_shared, tok_plain, tok_shared, _ = compare(backend, batch, 1, args.repeats)
        all_plain, all_shared, _, _, same = compare(backend, batch, args.max_new_tokens, args.repeats)
        row = {"timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": backend.model_id,
               "device": device, "dtype": backend.dtype, "torch_threads": torch.get_num_threads(),
               "workload": name, "n_prompts": len(batch), "mean_prompt_tokens": round(sum(lengths) / len(lengths)),
               "budgets": " ".join(map(str, args.budgets)), "batch_size": args.batch_size,
               "max_new_tokens": args.max_new_tokens, "repeats": args.repeats,
               "prompt_tokens_plain": tok_plain, "prompt_tokens_shared": tok_shared,
               "seconds_prefill_plain": round(pre_plain, 3), "seconds_prefill_shared": round(pre_shared, 3),
               "prefill_ratio": round(pre_plain / pre_shared, 2),
               "seconds_total_plain": round(all_plain, 3), "seconds_total_shared": round(all_shared, 3),
               "total_ratio": round(all_plain / all_shared, 2), "identical": round(same, 4),
               "few_shot_source": shots_source if name.startswith("long") else "",
               "torch": env["versions"]["torch"], "transformers": env["versions"]["transformers"],
               "platform": env["platform"], "git_sha": env["git_sha"]}
        print(f"{name:15s} {len(batch):3d} prompts x {row['mean_prompt_tokens']:5d} tokens | prompt tokens run "
              f"{tok_plain:6d} -> {tok_shared:6d} | prefill {pre_plain:7.2f} s -> {pre_shared:7.2f} s "
              f"x{row['prefill_ratio']:.2f} | {args.max_new_tokens} new tokens {all_plain:7.2f} s -> "
              f"{all_shared:7.2f} s x{row['total_ratio']:.2f} | identical {same:.0%}", flush=True)
        append_csv(out, [row])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
