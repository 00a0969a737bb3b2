"""Batched budget search vs the sequential reference, in one process.

Runs `search_budgets` (batched: one backend call per round for every question
still searching) and `search_budgets_sequential` (one question at a time, as
TALE's peer code does) on the same problems and model, generation cache off,
and prints:

- the speed ratio sequential / batched, and whether both found the same budgets, for the
  batched search in rounds (every still-searching question's next candidate in one call)
  and continuous (the backend's own `generate_flow`; on `HFBackend` continuous batching: a
  question's next candidate joins the running batch as soon as its last answer ends), each also in ladder mode
  (each question's halving candidates β0/2, β0/4, ... at once, the sequential decisions
  replayed on the answers);
- the batched search's generated tokens/s, next to llama.cpp serving the same
  GGUF at one request on this machine (when `llama_cpp` is installed);
- the search's overhead over a raw batched `generate` of exactly the prompts
  it sent, call for call (goal: <= 10%).

Appends one CSV row (machine, device, versions) to
results/benchmarks/search_speed.csv. Cost on a 2-core CPU with the embedded
model at the defaults: about 5 minutes.

    python benchmarks/search_speed.py [--n 32] [--max-new-tokens 128] [--batch-size 32] [--model ID] [--dtype bfloat16]
        [--shared-prefix]

With ``--engine llama-server`` (``make install-medium``) the same comparison runs on llama.cpp's server, as the
medium profile does (its model and `backend_options` from ``profiles.yaml``: TALE's raw rendering, answers
ending at their first numeric ``[[...]]``; ``--batch-size`` slots), e.g. ``--engine llama-server --model qwen2.5-coder-0.5b --data gsm8k --batch-size 8
--max-new-tokens 1024``. There the sequential reference sends one prompt at a time to the same server, so the
ratio is bounded by what the server's slots decode together over one request alone; there "continuous" keeps
every slot busy (`LlamaServerBackend.generate_flow`: a follow-up is sent as soon as its answer arrives). The
raw-generate overhead is measured on ``hf`` only (it would double the run).
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone

from budgetlib import data, prompts
from budgetlib.backends.base import generate_flow
from budgetlib.backends.hf import HFBackend, embedded_gguf_path
from budgetlib.paths import project_root
from budgetlib.runs import append_csv, environment_info
from budgetlib.search import search_budgets, search_budgets_sequential


class Recording:
    """Delegates to a backend and records each call's prompts and tokens."""

    def __init__(self, backend):
        self.backend, self.model_id, self.calls = backend, backend.model_id, []

    def identity(self):
        return self.backend.identity()

    def render(self, prompt, assistant_prefix=None):
        return self.backend.render(prompt, assistant_prefix)

    def generate(self, prompts_, **kw):
        gens = self.backend.generate(prompts_, **kw)
        self.calls.append((list(prompts_), kw["max_new_tokens"], sum(g.n_output_tokens for g in gens)))
        return gens


class FlowRecording(Recording):
    """A `Recording` that lets the backend schedule a flow itself (continuous batching) and counts the
    answers' tokens as they arrive."""

    def __init__(self, backend):
        super().__init__(backend)
        self.tokens = 0

    def generate_flow(self, requests, follow, *, max_new_tokens, batch_size=None):
        def counted(tag, gen):
            self.tokens += gen.n_output_tokens
            return follow(tag, gen)

        return generate_flow(self.backend, requests, counted, max_new_tokens=max_new_tokens, batch_size=batch_size)


def llama_cpp_tokens_per_s(questions: list[str], max_new_tokens: int, threads: int) -> float | None:
    from budgetlib.llama_cpp import load_llama

    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return None
    llm = load_llama(  # repacking off, as everywhere budgetlib loads a GGUF with llama.cpp
        str(embedded_gguf_path()), n_ctx=2048, n_threads=threads, verbose=False, seed=0)
    tokens, start = 0, time.perf_counter()
    for q in questions:
        out = llm.create_chat_completion(messages=[{"role": "user", "content": q}], max_tokens=max_new_tokens,
                                         temperature=0.0)
        tokens += out["usage"]["completion_tokens"]
    return tokens / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--llama-prompts", type=int, default=8, help="prompts for the llama.cpp comparison")
    ap.add_argument("--model", default=None)
    ap.add_argument("--dtype", default=None, help="hf only: the weights' dtype (default float32 on a CPU)")
    ap.add_argument("--shared-prefix", action="store_true",
                    help="hf only: prompts that share a prefix run it once (HFBackend(shared_prefix=True))")
    ap.add_argument("--engine", choices=("hf", "llama-server"), default="hf")
    ap.add_argument("--data", default="synthetic", help="a named dataset; its train split is searched")
    args = ap.parse_args()

    env = environment_info()
    if args.engine == "hf":
        backend = HFBackend(args.model, batch_size=args.batch_size, progress=False, dtype=args.dtype,
                            shared_prefix=args.shared_prefix)
    else:  # the medium profile's engine and options (profiles.yaml), --batch-size slots
        from budgetlib.backends import open_backend
        from budgetlib.profiles import profile

        backend = open_backend(profile("medium", "02", model=args.model), batch_size=args.batch_size)
    problems = data.load(args.data, "train", limit=args.n)
    backend.generate(["warm-up"], max_new_tokens=4)
    kw = dict(max_new_tokens=args.max_new_tokens)

    def timed(wrapper, **extra):
        t0 = time.perf_counter()
        results = search_budgets(wrapper, problems, batch_size=args.batch_size, progress=False, **kw, **extra)
        return results, time.perf_counter() - t0

    recorded, laddered = Recording(backend), Recording(backend)  # no flow of their own: rounds
    batched, t_batched = timed(recorded)
    ladder, t_ladder = timed(laddered, ladder=True)
    flows = {}  # name -> (results, seconds, generated tokens): continuous batching, where the backend has it
    if hasattr(backend, "generate_flow"):
        for name, extra in (("continuous", {}), ("continuous_ladder", {"ladder": True})):
            flowing = FlowRecording(backend)
            results, seconds = timed(flowing, **extra)
            flows[name] = (results, seconds, flowing.tokens)
    t0 = time.perf_counter()
    sequential = search_budgets_sequential(backend, problems, **kw)
    t_sequential = time.perf_counter() - t0

    def same_as_sequential(results):
        return None if results is None else f"{sum(a == b for a, b in zip(results, sequential))}/{len(problems)}"

    same, same_ladder = same_as_sequential(batched), same_as_sequential(ladder)
    ladder_tokens = sum(n for _, _, n in laddered.calls)

    t_raw = None
    if args.engine == "hf":
        t0 = time.perf_counter()
        for call_prompts, max_new, _ in recorded.calls:  # the same work as raw generate calls
            backend.generate(call_prompts, max_new_tokens=max_new)
        t_raw = time.perf_counter() - t0
    tokens = sum(n for _, _, n in recorded.calls)
    searched = sum(r.vanilla_correct for r in batched)

    llama_rate = None
    if args.model is None and args.engine == "hf":
        questions = [prompts.VANILLA_COT.render(p.question) for p in problems[:args.llama_prompts]]
        llama_rate = llama_cpp_tokens_per_s(questions, args.max_new_tokens, threads=env["cpu_count"] or 2)

    row = {"timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": backend.model_id,
           "engine": args.engine, "data": f"{args.data}/train",
           "device": env["cuda"] or f"cpu ({env['cpu_count']} cores)", "dtype": getattr(backend, "dtype", "gguf"),
           "shared_prefix": getattr(backend, "shared_prefix", None),
           "n_problems": len(problems), "n_searched": searched, "max_new_tokens": args.max_new_tokens,
           "batch_size": args.batch_size, "backend_calls_batched": len(recorded.calls),
           "seconds_sequential": round(t_sequential, 2), "seconds_batched": round(t_batched, 2),
           "speedup": round(t_sequential / t_batched, 2), "same_results": same,
           "seconds_ladder": round(t_ladder, 2), "speedup_ladder": round(t_sequential / t_ladder, 2),
           "same_results_ladder": same_ladder, "backend_calls_ladder": len(laddered.calls),
           "tokens_batched": tokens, "tokens_ladder": ladder_tokens}
    for name in ("continuous", "continuous_ladder"):
        results, seconds, generated = flows.get(name, (None, None, None))
        row |= {f"seconds_{name}": None if results is None else round(seconds, 2),
                f"speedup_{name}": None if results is None else round(t_sequential / seconds, 2),
                f"same_results_{name}": same_as_sequential(results), f"tokens_{name}": generated}
    row |= {
           "batched_tokens_per_s": round(tokens / t_batched, 1),
           "llama_cpp_tokens_per_s_1_request": None if llama_rate is None else round(llama_rate, 1),
           "seconds_raw_generate": None if t_raw is None else round(t_raw, 2),
           "search_overhead": None if t_raw is None else round(t_batched / t_raw - 1, 4),
           "torch": env["versions"]["torch"], "transformers": env["versions"]["transformers"],
           "platform": env["platform"], "git_sha": env["git_sha"]}
    print(f"{len(problems)} problems ({searched} with a correct vanilla answer, searched), "
          f"{len(recorded.calls)} batched backend calls")
    print(f"sequential {t_sequential:7.1f} s | batched in rounds {t_batched:7.1f} s | speed-up "
          f"x{t_sequential / t_batched:.2f} | same results {same}")
    print(f"ladder in rounds {t_ladder:7.1f} s ({len(laddered.calls)} calls, {ladder_tokens} tokens vs {tokens} by "
          f"rounds) | speed-up x{t_sequential / t_ladder:.2f} | same results {same_ladder}")
    if flows:
        for label, name in (("continuous", "continuous"), ("continuous ladder", "continuous_ladder")):
            print(f"{label} {row[f'seconds_{name}']:7.1f} s ({row[f'tokens_{name}']} tokens) | speed-up "
                  f"x{row[f'speedup_{name}']:.2f} | same results {row[f'same_results_{name}']}")
    print(f"batched search: {tokens / t_batched:.1f} generated tokens/s; llama.cpp, one request: "
          + ("not installed (pip install llama-cpp-python)" if llama_rate is None else f"{llama_rate:.1f} tokens/s"))
    if t_raw is not None:
        print(f"raw generate of the same calls {t_raw:.1f} s: search overhead {100 * (t_batched / t_raw - 1):+.1f}%")
    if hasattr(backend, "close"):
        backend.close()
    out = project_root() / "results" / "benchmarks" / "search_speed.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    append_csv(out, [row])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
