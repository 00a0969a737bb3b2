"""Per-token log-probabilities of an LM head: time and peak memory, forward and
forward+backward, for every way we know of computing them.

Methods (each returns logp [N] for hidden [N, H], lm_head weight [V, H],
targets [N]; backward is ``(logp * g).sum()`` with a random g, as in DPO/GRPO):

- ``naive``          logits = h @ W.T, ``log_softmax(logits.float())``, gather
- ``trl_selective``  trl's ``selective_log_softmax`` on the materialised logits
- ``trl_chunked``    trl's ``ChunkedLogProbFunction`` (cuBLAS tiles + Triton fold;
                     what its ``add_fused_lm_head`` runs), when trl is installed
- ``liger_flce``     Liger's fused linear cross-entropy, ``reduction="none"``
                     (= -logp), when ``liger-kernel`` is installed
- ``ours_reference`` `token_logprobs_reference` (chunked PyTorch, fp32 math)
- ``ours_triton``    `token_logprobs_triton` (fused Triton kernels)
- ``trl_chunked_dpo`` / ``ours_triton_dpo``: the same two, asked for everything
                     trl's DPO asks for (entropy, mean logit, is-top-1; what
                     `budgetlib.training.fused_logprobs` routes in training)

Grid on CUDA (bf16): vocab 49152 / 128256 x tokens 4096 / 16384 x hidden
2048 / 4096, with the weight trainable and frozen (LoRA). Peak memory is the
CUDA allocator's peak above what was allocated before the call (outputs and
gradients included). Prints speed-up (naive time / method time) and memory
ratio (method / naive) per point, and appends one CSV row per measurement (GPU
name, torch/triton/trl/liger versions) to results/benchmarks/token_logprobs.csv.
For our methods it also records the issue's two targets: ``mem_target_met``
(peak memory <= 1/4 of naive's) and ``time_vs_best_other`` (our time / the
fastest non-budgetlib method at that point, ``best_other`` names it; <= 1 means
we are fastest), and prints them as a closing summary.
Cost on one H100: a few minutes. A method that runs out of memory is recorded
as ``oom``; a missing optional package as ``missing``.

``--cpu-smoke`` runs a tiny grid on the CPU (Triton through its interpreter, so
``TRITON_INTERPRET=1`` is set before anything imports triton): a check that
the script works (~20 s), not a measurement; memory is not measured there and
the rows go to token_logprobs_smoke.csv instead. The error column is against
fp32 math on the same bf16 values: naive's bf16 logits show up there.

    python benchmarks/token_logprobs.py [--cpu-smoke] [--tokens 4096 16384] [--vocab 49152 128256]
        [--hidden 2048 4096] [--methods naive ours_triton ...] [--weight-grad both|yes|no] [--reps 5]
"""

from __future__ import annotations

import os
import sys

if "--cpu-smoke" in sys.argv:  # before torch/trl can import triton: the interpreter is chosen at import
    os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from importlib import metadata  # noqa: E402

import torch  # noqa: E402

from budgetlib.kernels import (token_logprob_stats, token_logprobs_reference, token_logprobs_triton,  # noqa: E402
                               triton_available)
from budgetlib.paths import project_root  # noqa: E402
from budgetlib.runs import append_csv, environment_info  # noqa: E402

METHODS = ["naive", "trl_selective", "trl_chunked", "trl_chunked_dpo", "liger_flce", "ours_reference", "ours_triton",
           "ours_triton_dpo"]
DPO_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")  # what trl 1.16's DPOTrainer asks its fused head for
MEM_TARGET = 0.25  # the issue: peak memory at most a quarter of naive's


class Missing(Exception):
    """An optional package is not installed."""


def naive(h, w, t):
    logits = h @ w.T
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, t[:, None]).squeeze(-1)


def trl_selective(h, w, t):
    try:
        from trl.trainer.utils import selective_log_softmax
    except ImportError as e:
        raise Missing("trl") from e
    return selective_log_softmax(h @ w.T, t)


def trl_chunked(h, w, t):
    try:
        from trl.kernels import ChunkedLogProbFunction
    except ImportError as e:
        raise Missing("trl") from e
    # trl 1.16: (hidden, weight, bias, targets, temperature, vocab chunk, softcap, logit scale, outputs)
    return ChunkedLogProbFunction.apply(h, w, None, t, 1.0, 32768, None, 1.0, ("log_probs",))[0]


def trl_chunked_dpo(h, w, t):
    try:
        from trl.kernels import ChunkedLogProbFunction
    except ImportError as e:
        raise Missing("trl") from e
    return ChunkedLogProbFunction.apply(h, w, None, t, 1.0, 32768, None, 1.0, DPO_OUTPUTS)[0]


def liger_flce(h, w, t):
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except ImportError as e:
        raise Missing("liger-kernel") from e
    return -liger_fused_linear_cross_entropy(h, w, t, reduction="none")


def ours_reference(h, w, t):
    return token_logprobs_reference(h, w, t)


def ours_triton(h, w, t):
    if not triton_available():
        raise Missing("triton")
    return token_logprobs_triton(h, w, t)


def ours_triton_dpo(h, w, t):
    if not triton_available():
        raise Missing("triton")
    return token_logprob_stats(h, w, t, entropy=True, mean_logits=True, is_top1=True, backend="triton").logp


@torch.no_grad()
def fp32_logprobs(hidden, weight, targets, rows=1024):
    """Ground truth for the error columns: fp32 math on the same (bf16) values, in row chunks."""
    w = weight.float()
    return torch.cat([torch.log_softmax(hidden[i:i + rows].float() @ w.T, -1)
                      .gather(-1, targets[i:i + rows, None]).squeeze(-1) for i in range(0, len(targets), rows)])


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(fn, hidden, weight, targets, g, *, backward, reps, warmup):
    """(median ms, peak MiB above the starting allocation or None on CPU, logp of the last run)."""
    device = hidden.device

    def step():
        logp = fn(hidden, weight, targets)
        if backward:
            (logp * g).sum().backward()
            hidden.grad = weight.grad = None
        return logp

    for _ in range(warmup):  # also Triton's autotuning, outside the measurement
        step()
    peak = None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        logp = step()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    times = []
    for _ in range(reps):
        _sync(device)
        start = time.perf_counter()
        logp = step()
        _sync(device)
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times), peak, logp.detach().float()


def run_point(methods, n, h, v, dtype, device, weight_grad, reps, warmup, seed=0):
    """Rows for one (tokens, hidden, vocab, weight_grad) point, both passes, every method."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen).to(device, dtype)
    weight = (torch.randn(v, h, generator=gen) / h ** 0.5).to(device, dtype)
    targets = torch.randint(0, v, (n,), generator=gen).to(device)
    g = torch.randn(n, generator=gen).to(device)
    truth = fp32_logprobs(hidden, weight, targets)
    rows, reference_logp = [], None
    for backward in (False, True):
        hidden.requires_grad_(backward)
        weight.requires_grad_(backward and weight_grad)
        for name in methods:
            row = {"tokens": n, "hidden": h, "vocab": v, "method": name, "pass": "fwd+bwd" if backward else "fwd",
                   "weight_grad": weight_grad, "ms": None, "peak_mib": None, "max_abs_err_vs_fp32": None,
                   "max_abs_diff_vs_naive": None, "status": "ok"}
            try:
                ms, peak, logp = measure(globals()[name], hidden, weight, targets, g, backward=backward,
                                         reps=reps, warmup=warmup)
                row.update(ms=round(ms, 3), peak_mib=None if peak is None else round(peak, 1))
                if name == "naive" and not backward:
                    reference_logp = logp
                row["max_abs_err_vs_fp32"] = float(f"{(logp - truth).abs().max().item():.3g}")
                if reference_logp is not None:
                    row["max_abs_diff_vs_naive"] = float(f"{(logp - reference_logp).abs().max().item():.3g}")
            except Missing as e:
                row["status"] = f"missing {e}"
            except torch.cuda.OutOfMemoryError:
                row["status"] = "oom"
            except Exception as e:  # an optional package failing on this machine: record it, go on
                row["status"] = f"error {type(e).__name__}: {str(e)[:80]}"
            hidden.grad = weight.grad = None
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            rows.append(row)
    return rows


def _point(r):
    return r["tokens"], r["hidden"], r["vocab"], r["pass"], r["weight_grad"]


def add_ratios(rows):
    """Speed-up and memory ratio vs naive; for our methods also the issue's
    targets: memory <= MEM_TARGET x naive, time vs the fastest other method
    (budgetlib's own methods excluded)."""
    base = {_point(r): r for r in rows if r["method"] == "naive" and r["status"] == "ok"}
    for r in rows:
        b = base.get(_point(r))
        ok = b is not None and r["status"] == "ok"
        r["speedup_vs_naive"] = round(b["ms"] / r["ms"], 3) if ok else None
        r["mem_ratio_vs_naive"] = (round(r["peak_mib"] / b["peak_mib"], 3)
                                   if ok and r["peak_mib"] is not None and b["peak_mib"] else None)
        ours = r["method"].startswith("ours_")
        r["mem_target_met"] = (r["mem_ratio_vs_naive"] <= MEM_TARGET
                               if ours and r["mem_ratio_vs_naive"] is not None else None)
        others = [o for o in rows if _point(o) == _point(r) and o["status"] == "ok"
                  and not o["method"].startswith("ours_")]
        best = min(others, key=lambda o: o["ms"], default=None)
        r["best_other"] = best["method"] if ours and best is not None and r["status"] == "ok" else None
        r["time_vs_best_other"] = round(r["ms"] / best["ms"], 3) if r["best_other"] else None


def print_targets(rows):
    """One line per (point, our method): the two numbers the issue asks for."""
    ours = [r for r in rows if r["method"].startswith("ours_") and r["status"] == "ok"]
    if not ours:
        return
    print(f"\ntargets: memory <= {MEM_TARGET:g} x naive; time vs the fastest non-budgetlib method (<= 1: fastest)")
    for r in ours:
        mem = "-" if r["mem_ratio_vs_naive"] is None else \
            f"{r['mem_ratio_vs_naive']:.3f}x ({'met' if r['mem_target_met'] else 'MISSED'})"
        vs = "-" if r["time_vs_best_other"] is None else f"{r['time_vs_best_other']:.2f}x {r['best_other']}"
        print(f"{r['tokens']:>6} {r['hidden']:>5} {r['vocab']:>6} W grad {str(r['weight_grad']):>5} {r['pass']:>7} "
              f"{r['method']:>15}  memory {mem:>16}  time {vs}")


def print_table(rows):
    print(f"{'tokens':>6} {'H':>5} {'V':>6} {'W grad':>6} {'pass':>7} {'method':>15} {'ms':>9} {'MiB':>8} "
          f"{'speed-up':>8} {'memory':>7} {'err fp32':>8}")

    def fmt(x, spec, suffix=""):
        return format("-", ">" + spec.split(".")[0]) if x is None else format(x, spec) + suffix

    for r in rows:
        tail = r["status"] if r["status"] != "ok" else (
            f"{fmt(r['ms'], '9.2f')} {fmt(r['peak_mib'], '8.0f')} {fmt(r['speedup_vs_naive'], '7.2f', 'x')} "
            f"{fmt(r['mem_ratio_vs_naive'], '6.2f', 'x')} {fmt(r['max_abs_err_vs_fp32'], '8.1e')}")
        print(f"{r['tokens']:>6} {r['hidden']:>5} {r['vocab']:>6} {str(r['weight_grad']):>6} {r['pass']:>7} "
              f"{r['method']:>15} {tail}")


def _version(pkg):
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny grid on the CPU (Triton interpreted)")
    ap.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--vocab", type=int, nargs="+", default=[49152, 128256])
    ap.add_argument("--hidden", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--weight-grad", choices=["both", "yes", "no"], default="both")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()

    if args.cpu_smoke:
        device = torch.device("cpu")
        args.tokens, args.vocab, args.hidden, args.reps, args.warmup = [48], [1000], [40], 1, 1
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        sys.exit("no CUDA device: run with --cpu-smoke for the CPU check")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    weight_grads = {"both": [True, False], "yes": [True], "no": [False]}[args.weight_grad]

    env = environment_info()
    rows = []
    for v in args.vocab:
        for n in args.tokens:
            for h in args.hidden:
                for wg in weight_grads:
                    rows += run_point(args.methods, n, h, v, dtype, device, wg, args.reps, args.warmup)
    add_ratios(rows)
    print_table(rows)
    print_targets(rows)

    stamp = {"timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "device": env["cuda"] if device.type == "cuda" else f"cpu ({env['cpu_count']} cores, smoke)",
             "dtype": args.dtype}
    versions = {"torch": torch.__version__, "triton": _version("triton"), "trl": _version("trl"),
                "liger_kernel": _version("liger-kernel"), "platform": env["platform"], "git_sha": env["git_sha"]}
    out = project_root() / "results" / "benchmarks" / ("token_logprobs_smoke.csv" if args.cpu_smoke
                                                        else "token_logprobs.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    append_csv(out, [{**stamp, **r, **versions} for r in rows])
    print(f"wrote {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
