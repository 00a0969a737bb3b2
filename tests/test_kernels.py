"""budgetlib.kernels.token_logprobs: both twins against a float64
``log_softmax(h @ w.T / T).gather`` (values, entropy, gradients for hidden
and weight), the metrics of `token_logprob_stats` (mean logit, is-top-1; also
against trl's own ``ChunkedLogProbFunction``), dispatch, and input validation.

The Triton tests run the real kernels on CPU tensors in Triton's interpreter.
Triton decides at ``import triton`` whether its own helpers are interpreted,
so ``TRITON_INTERPRET=1`` must be set before anything in the process imports
triton (trl does, for one). Hence: in a normal pytest run the `interpret`
fixture skips them and `test_triton_kernels_in_interpreter_subprocess` reruns
them in a child pytest started with the variable set, then checks from its
JUnit report that they ran rather than skipped; ``TRITON_INTERPRET=1 pytest
tests/test_kernels.py`` runs them in-process. Each asserts the kernel launch
counter moved. Shapes are tiny (~1 ms per interpreted program); the file takes
about 20 s on a 2-core CPU. With CUDA, `test_cuda_*` run larger shapes.

Tolerances (the module docstring states the same): fp32 logp/entropy atol 1e-4
(+ 1e-6 relative, for logits in the hundreds) and gradients rtol 1e-4;
bf16/fp16 logp/entropy atol 2e-3 and gradients within 2% of their largest entry.
mean_logits: the same value tolerances; is_top1: exact, except rows whose two
largest float64 logits are within 1e-4 (fp32 rounding may order them either
way; exact ties are tested separately on integer-valued inputs, where every
sum is exact).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from budgetlib import kernels
from budgetlib.kernels import (backend_for, token_logprob_stats, token_logprobs, token_logprobs_reference,
                               token_logprobs_triton)
tlp_module = importlib.import_module("budgetlib.kernels.token_logprobs")  # the module, not the function

HAS_TRL = importlib.util.find_spec("trl") is not None
needs_trl = pytest.mark.skipif(not HAS_TRL, reason="trl is not installed (the train extra)")
needs_triton = pytest.mark.skipif(not kernels.triton_available(),
                                  reason="triton is not installed (pip install triton==3.9.0, the kernels extra)")


def _interpreter_live() -> bool:
    if not kernels.triton_available():
        return False
    from budgetlib.kernels._triton_logprobs import interpreter_live

    return interpreter_live()


INTERPRETER_LIVE = _interpreter_live()  # TRITON_INTERPRET=1 was set when this process started
needs_interpreter = pytest.mark.skipif(not INTERPRETER_LIVE, reason="runs in the TRITON_INTERPRET=1 child process")
needs_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and kernels.triton_available()) or INTERPRETER_LIVE,
                                reason="needs a CUDA device and triton (and not the interpreter)")

# (tokens, hidden, vocab, temperature, vocab_splits, chunk_rows): odd sizes on purpose; the interpreter's tiles
# are 16 rows x 32 vocab x 16 hidden, so none of these is a multiple of every tile.
CASES = [
    (1, 16, 50, 1.0, None, None),  # a single token
    (21, 37, 301, 0.7, None, 8),  # odd hidden size, several backward chunks
    (33, 24, 257, 1.3, 3, 16),  # three vocabulary slices merged, T > 1
    (70, 48, 1000, 1.0, 2, 32),  # several row blocks, 32 vocabulary tiles per slice
]
TOL = {torch.float32: dict(value=1e-4, grad_rtol=1e-4, grad_rel_max=1e-5),
       torch.bfloat16: dict(value=2e-3, grad_rtol=0.0, grad_rel_max=2e-2),
       torch.float16: dict(value=2e-3, grad_rtol=0.0, grad_rel_max=2e-2)}


@pytest.fixture
def interpret(monkeypatch):
    """Triton's CPU interpreter for this test; returns the launch counter."""
    if not INTERPRETER_LIVE:
        pytest.skip("interpreter tests run in a child process with TRITON_INTERPRET=1 "
                    "(test_triton_kernels_in_interpreter_subprocess)")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("BUDGETLIB_KERNELS", raising=False)
    from budgetlib.kernels import _triton_logprobs

    return _triton_logprobs.LAUNCHES


def make_inputs(n, h, v, dtype, *, seed=0, scale=1.0, device="cpu", lead=None):
    gen = torch.Generator().manual_seed(seed)
    lead = lead or (n,)
    hidden = (torch.randn(*lead, h, generator=gen) * scale).to(device, dtype)
    weight = (torch.randn(v, h, generator=gen) / h ** 0.5 * 2).to(device, dtype)
    targets = torch.randint(0, v, lead, generator=gen).to(device)
    g = torch.randn(lead, generator=gen).to(device)
    g_ent = torch.randn(lead, generator=gen).to(device)
    return hidden, weight, targets, g, g_ent


def naive(hidden, weight, targets, temperature, g, g_ent):
    """Float64 ground truth of the same (already rounded) inputs, with autograd."""
    h = hidden.detach().double().requires_grad_()
    w = weight.detach().double().requires_grad_()
    logp_all = torch.log_softmax((h @ w.T) / temperature, dim=-1)
    logp = logp_all.gather(-1, targets[..., None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    ((logp * g.double()).sum() + (entropy * g_ent.double()).sum()).backward()
    return logp, entropy, h.grad, w.grad


def run(fn, hidden, weight, targets, temperature, g, g_ent, *, entropy=True, grad_w=True, **kw):
    h = hidden.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_(grad_w)
    out = fn(h, w, targets, temperature=temperature, return_entropy=entropy, **kw)
    logp, ent = out if entropy else (out, None)
    loss = (logp * g).sum() + ((ent * g_ent).sum() if entropy else 0.0)
    loss.backward()
    return logp, ent, h.grad, w.grad


def assert_matches(got, want, dtype, *, entropy=True):
    tol = TOL[dtype]
    logp, ent, gh, gw = got
    w_logp, w_ent, w_gh, w_gw = want
    assert logp.dtype == torch.float32 and logp.shape == w_logp.shape
    torch.testing.assert_close(logp.double(), w_logp.detach(), atol=tol["value"], rtol=1e-6)
    if entropy:
        assert ent.dtype == torch.float32
        torch.testing.assert_close(ent.double(), w_ent.detach(), atol=tol["value"], rtol=1e-6)
    for grad, ref in ((gh, w_gh), (gw, w_gw)):
        if grad is None:
            continue
        assert grad.shape == ref.shape
        atol = tol["grad_rel_max"] * ref.abs().max().item()
        torch.testing.assert_close(grad.double(), ref, atol=atol, rtol=tol["grad_rtol"])


def _check(fn, case, dtype, **kw):
    n, h, v, temp, splits, chunk = case
    hidden, weight, targets, g, g_ent = make_inputs(n, h, v, dtype)
    want = naive(hidden, weight, targets, temp, g, g_ent)
    if fn is token_logprobs_triton:
        kw.update(vocab_splits=splits, chunk_rows=chunk)
    else:
        kw.update(chunk_rows=chunk)
    # entropy-weighted gradients only hold when entropy is returned; logp-only runs use g_ent = 0
    entropy = kw.pop("entropy", True)
    if not entropy:
        want = naive(hidden, weight, targets, temp, g, torch.zeros_like(g_ent))
    got = run(fn, hidden, weight, targets, temp, g, g_ent, entropy=entropy, **kw)
    assert_matches(got, want, dtype, entropy=entropy)


# ---------------------------------------------------------------- reference twin (plain PyTorch, always runs)

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"N{c[0]}-H{c[1]}-V{c[2]}-T{c[3]}")
def test_reference_matches_naive(case, dtype):
    _check(token_logprobs_reference, case, dtype)


def test_reference_logp_only_and_frozen_weight():
    _check(token_logprobs_reference, CASES[1], torch.float32, entropy=False)
    _check(token_logprobs_reference, CASES[1], torch.float32, grad_w=False)


def test_reference_under_autocast_casts_like_linear():
    hidden, weight, targets, g, _ = make_inputs(9, 24, 77, torch.float32)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logp = token_logprobs_reference(h, w, targets)
    (logp * g).sum().backward()
    want = naive(hidden.bfloat16(), weight.bfloat16(), targets, 1.0, g, torch.zeros_like(g))
    assert logp.dtype == torch.float32 and h.grad.dtype == w.grad.dtype == torch.float32  # back to the fp32 leaves
    torch.testing.assert_close(logp.double(), want[0].detach(), atol=1e-4, rtol=0)  # fp32 math on bf16 values
    torch.testing.assert_close(h.grad.double(), want[2], atol=2e-2 * want[2].abs().max().item(), rtol=0)


# ---------------------------------------------------------------- Triton twin in the CPU interpreter

@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"N{c[0]}-H{c[1]}-V{c[2]}-T{c[3]}")
def test_triton_matches_naive(interpret, case, dtype):
    before = dict(interpret)
    _check(token_logprobs_triton, case, dtype)
    assert interpret["forward"] == before["forward"] + 1
    assert interpret["backward"] > before["backward"]


@needs_triton
@pytest.mark.skipif(INTERPRETER_LIVE, reason="this is the child run")
def test_triton_kernels_in_interpreter_subprocess(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.pop("BUDGETLIB_KERNELS", None)
    report = tmp_path / "junit.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider",
                           "-k", "triton and not subprocess and not cuda", f"--junitxml={report}"],
                          env=env, cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    cases = ET.parse(report).getroot().iter("testcase")
    outcome = {c.get("name"): "skipped" if c.find("skipped") is not None else "ran" for c in cases}
    assert outcome, proc.stdout[-3000:]
    skipped = {name for name, how in outcome.items() if how == "skipped"}
    assert skipped <= ({name for name in outcome if "trl" in name} if not HAS_TRL else set()), outcome
    assert sum(name.startswith("test_triton_matches_naive") for name in outcome) == 2 * len(CASES)
    assert sum(name.startswith("test_triton_stats_match_naive") for name in outcome) == 2 * len(CASES)


@needs_triton
@pytest.mark.skipif(INTERPRETER_LIVE, reason="kernels are interpreted in this process")
@pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION")
def test_kernels_lower_to_gpu_code_without_a_gpu(dtype="bf16"):
    """The interpreter never compiles; this compiles both kernels for sm_90 and
    sm_80 with Triton's bundled ptxas (the tile sizes of the first GPU config;
    bf16 only: the fp32 IEEE build takes ~14 s and was checked by hand)."""
    import inspect

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from budgetlib.kernels import _triton_logprobs as tk

    n, v, h, warps, stages = tk._GPU_CONFIGS[0]
    for fn in (tk._fwd_kernel, tk._bwd_kernel):
        names = list(inspect.signature(fn).parameters)
        const = {"ENTROPY" if "ENTROPY" in names else "ENTROPY_GRAD": True, "IEEE": dtype == "fp32", "UPCAST": False,
                 "BLOCK_N": n, "BLOCK_V": v, "BLOCK_H": h}
        const.update({flag: True for flag in ("MEAN", "TOP1") if flag in names})  # the forward's metric paths
        typed = {"h_ptr": f"*{dtype}", "w_ptr": f"*{dtype}", "dz_ptr": f"*{dtype}", "tgt_ptr": "*i64",
                 "inv_temp": "fp32"}
        signature = {a: "constexpr" if a in const else typed.get(a, "*fp32" if a.endswith("_ptr") else "i32")
                     for a in names}
        aligned = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(names) if a not in const | typed}
        for cap in (90, 80):
            kernel = triton.compile(ASTSource(triton.jit(fn), signature, const, attrs=aligned),
                                    target=GPUTarget("cuda", cap, 32),
                                    options={"num_warps": warps, "num_stages": stages})
            assert "mma" in kernel.asm["ptx"] or dtype == "fp32"  # bf16 tiles go to the tensor cores
            assert kernel.metadata.shared <= 160 * 1024


@needs_triton
def test_triton_kernels_are_interpreted(interpret):
    from budgetlib.kernels._triton_logprobs import _kernels, interpret_mode

    assert interpret_mode()
    assert all(type(k).__name__ == "InterpretedFunction" for k in _kernels(True))


@needs_triton
def test_triton_fp16_logp_only_and_frozen_weight(interpret):
    _check(token_logprobs_triton, CASES[1], torch.float16)
    _check(token_logprobs_triton, CASES[2], torch.float32, entropy=False)
    _check(token_logprobs_triton, CASES[2], torch.bfloat16, grad_w=False)


@needs_triton
def test_triton_large_logits_leading_dims_and_noncontiguous(interpret):
    # logits in the hundreds: exp would overflow without the running max
    hidden, weight, targets, g, g_ent = make_inputs(0, 20, 70, torch.float32, scale=60.0, lead=(2, 7))
    got = run(token_logprobs_triton, hidden, weight, targets, 0.9, g, g_ent)
    assert_matches(got, naive(hidden, weight, targets, 0.9, g, g_ent), torch.float32)
    assert got[0].shape == (2, 7) and got[0].min() < -50  # really far from uniform
    # a [B, T, H] slice such as last_hidden_state[:, :-1] (not contiguous)
    full, weight, _, _, _ = make_inputs(0, 20, 70, torch.float32, seed=1, lead=(3, 6))
    sliced, targets = full[:, :-1], torch.randint(0, 70, (3, 5))
    want = token_logprobs_reference(sliced, weight, targets)
    torch.testing.assert_close(token_logprobs_triton(sliced, weight, targets), want, atol=1e-4, rtol=0)


@needs_triton
def test_bf16_accumulates_in_fp32(interpret):
    """Ours matches fp32 math on the bf16 values far better than bf16 logits do."""
    hidden, weight, targets, _, _ = make_inputs(24, 64, 200, torch.bfloat16, scale=3.0)
    truth = torch.log_softmax(hidden.double() @ weight.double().T, -1).gather(-1, targets[:, None]).squeeze(-1)
    bf16_logits = torch.log_softmax((hidden @ weight.T).double(), -1).gather(-1, targets[:, None]).squeeze(-1)
    ours = token_logprobs_triton(hidden, weight, targets).double()
    naive_err, our_err = (bf16_logits - truth).abs().max().item(), (ours - truth).abs().max().item()
    assert our_err < 1e-4 < naive_err / 10, (our_err, naive_err)


@pytest.mark.parametrize("fn", [token_logprobs_reference, pytest.param(token_logprobs_triton, marks=needs_interpreter)])
def test_no_tokens(fn):
    hidden = torch.zeros(0, 8, requires_grad=True)
    weight = torch.randn(11, 8, requires_grad=True)
    logp, ent = fn(hidden, weight, torch.zeros(0, dtype=torch.long), return_entropy=True)
    assert logp.shape == ent.shape == (0,)
    (logp.sum() + ent.sum()).backward()
    assert hidden.grad.shape == (0, 8) and torch.count_nonzero(weight.grad) == 0


# ---------------------------------------------------------------- metrics: mean logit and is-top-1 (trl's DPO outputs)

def top1_heavy_targets(hidden, weight, temperature, seed=0):
    """Targets that are the argmax for a third of the rows and the runner-up for
    another third (random targets are almost never top-1)."""
    z = hidden.double() @ weight.double().T / temperature
    top2 = z.topk(2, dim=-1).indices
    rand = torch.randint(0, weight.shape[0], z.shape[:-1], generator=torch.Generator().manual_seed(seed + 7))
    which = torch.arange(z.shape[0]) % 3
    return torch.where(which == 0, top2[:, 0], torch.where(which == 1, top2[:, 1], rand))


def naive_metrics(hidden, weight, targets, temperature):
    """(mean logit, is_top1, rows where the float64 top-2 gap is under 1e-4)."""
    z = hidden.double() @ weight.double().T / temperature
    vals = z.topk(2, dim=-1).values if z.shape[-1] > 1 else torch.cat([z, z - 1], -1)
    return z.mean(-1), z.argmax(-1) == targets, (vals[:, 0] - vals[:, 1]).abs() < 1e-4


def _check_stats(backend, case, dtype):
    n, h, v, temp, splits, chunk = case
    hidden, weight, _, g, g_ent = make_inputs(n, h, v, dtype)
    targets = top1_heavy_targets(hidden, weight, temp)
    want = naive(hidden, weight, targets, temp, g, g_ent)
    want_mean, want_top1, ambiguous = naive_metrics(hidden, weight, targets, temp)
    hh, ww = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    tuning = dict(chunk_rows=chunk, vocab_splits=splits) if backend == "triton" else dict(chunk_rows=chunk)
    stats = token_logprob_stats(hh, ww, targets, temperature=temp, entropy=True, mean_logits=True, is_top1=True,
                                backend=backend, **tuning)
    ((stats.logp * g).sum() + (stats.entropy * g_ent).sum()).backward()
    assert_matches((stats.logp, stats.entropy, hh.grad, ww.grad), want, dtype)  # metrics leave the rest unchanged
    assert stats.mean_logits.dtype == torch.float32 and not stats.mean_logits.requires_grad
    torch.testing.assert_close(stats.mean_logits.double(), want_mean, atol=TOL[dtype]["value"], rtol=1e-6)
    assert stats.is_top1.dtype == torch.bool and not stats.is_top1.requires_grad
    assert torch.equal(stats.is_top1[~ambiguous], want_top1[~ambiguous])
    if n > 3:
        assert want_top1.any() and not want_top1.all()


def integer_inputs(n=40, h=8, v=100, seed=3):
    """Small-integer hidden/weight: every logit is an exact integer, so ties are
    exact whatever the summation order, and plentiful. Targets: the first
    maximum, the last maximum (a later tie: not top-1), random, or token 0."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randint(-2, 3, (n, h), generator=gen).float()
    weight = torch.randint(-2, 3, (v, h), generator=gen).float()
    z = hidden @ weight.T
    is_max = z == z.max(-1, keepdim=True).values
    first = is_max.float().argmax(-1)
    last = v - 1 - is_max.flip(-1).float().argmax(-1)
    rand = torch.randint(0, v, (n,), generator=gen)
    which = torch.arange(n) % 4
    targets = torch.where(which == 0, first, torch.where(which == 1, last, torch.where(which == 2, rand, 0)))
    assert (last[which == 1] != first[which == 1]).any()  # some rows really have a later tie
    return hidden, weight, targets


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"N{c[0]}-H{c[1]}-V{c[2]}-T{c[3]}")
def test_reference_stats_match_naive(case, dtype):
    _check_stats("reference", case, dtype)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"N{c[0]}-H{c[1]}-V{c[2]}-T{c[3]}")
def test_triton_stats_match_naive(interpret, case, dtype):
    before = dict(interpret)
    _check_stats("triton", case, dtype)
    assert interpret["forward"] == before["forward"] + 1 and interpret["backward"] > before["backward"]


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=[needs_triton, needs_interpreter])])
def test_stats_ties_pick_the_first_maximum_like_argmax(backend):
    hidden, weight, targets = integer_inputs()
    want = (hidden.double() @ weight.double().T).argmax(-1) == targets
    tuning = dict(vocab_splits=3) if backend == "triton" else dict(chunk_rows=7)  # ties across vocabulary slices
    stats = token_logprob_stats(hidden, weight, targets, temperature=0.5, is_top1=True, backend=backend, **tuning)
    assert torch.equal(stats.is_top1, want) and want.any() and not want.all()
    assert stats.entropy is None and stats.mean_logits is None  # only what was asked for
    flat = token_logprob_stats(torch.zeros(5, 8), weight, torch.tensor([0, 1, 0, 99, 50]), mean_logits=True,
                               is_top1=True, backend=backend, **tuning)  # all logits equal: only token 0 is top-1
    assert flat.is_top1.tolist() == [True, False, True, False, False]
    assert torch.equal(flat.mean_logits, torch.zeros(5))


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=[needs_triton, needs_interpreter])])
def test_stats_leading_dims_no_tokens_and_backend_errors(backend):
    hidden, weight, targets, _, _ = make_inputs(0, 12, 40, torch.float32, lead=(2, 5))
    stats = token_logprob_stats(hidden, weight, targets, entropy=True, mean_logits=True, is_top1=True,
                                backend=backend)
    assert all(x.shape == (2, 5) for x in stats)
    torch.testing.assert_close(stats.logp, token_logprobs_reference(hidden, weight, targets), atol=1e-5, rtol=0)
    empty = token_logprob_stats(torch.zeros(0, 12, requires_grad=True), weight, torch.zeros(0, dtype=torch.long),
                                entropy=True, mean_logits=True, is_top1=True, backend=backend)
    assert [x.shape for x in empty] == [(0,)] * 4 and empty.is_top1.dtype == torch.bool
    with pytest.raises(ValueError, match="backend"):
        token_logprob_stats(hidden, weight, targets, backend="cuda")


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=[needs_triton, needs_interpreter])])
def test_stats_entropy_accurate_at_large_logits(backend):
    """Logits around 60 (a real LM head at T = 0.7): the entropy is accumulated
    relative to the running max, so it does not lose digits to lse - E_p[z]."""
    hidden, weight, targets, _, _ = make_inputs(64, 32, 3000, torch.float32, scale=2.0)
    weight = weight * 3
    z = hidden.double() @ weight.double().T / 0.7
    assert z.max(-1).values.mean() > 40
    logp_all = torch.log_softmax(z, -1)
    tuning = dict(vocab_splits=3) if backend == "triton" else dict(chunk_rows=10)
    stats = token_logprob_stats(hidden, weight, targets, temperature=0.7, entropy=True, backend=backend, **tuning)
    torch.testing.assert_close(stats.entropy.double(), -(logp_all.exp() * logp_all).sum(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(stats.logp.double(), logp_all.gather(-1, targets[:, None]).squeeze(-1), atol=5e-5,
                               rtol=0)


@needs_trl
@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=[needs_triton, needs_interpreter])])
@pytest.mark.parametrize("inputs", ["random", "integer"])
def test_stats_match_trl_chunked_function(backend, inputs):
    """Same values as trl 1.16's own ``ChunkedLogProbFunction`` (its CPU tile
    path; vocabulary tiles of 64 so its online merge runs), for every output
    we support, and the same gradients through logp and entropy."""
    from trl.kernels import ChunkedLogProbFunction

    temp = 0.7 if inputs == "random" else 0.5
    if inputs == "random":
        hidden, weight, _, g, g_ent = make_inputs(45, 24, 301, torch.float32, seed=5)
        targets = top1_heavy_targets(hidden, weight, temp)
    else:
        hidden, weight, targets = integer_inputs()
        g, g_ent = torch.randn(len(targets)), torch.randn(len(targets))
    results = []
    for fn in ("trl", "ours"):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        if fn == "trl":
            logp, ent, sq, mean, top1 = ChunkedLogProbFunction.apply(
                h, w, None, targets, temp, 64, None, 1.0, ("log_probs", "entropy", "mean_logits", "is_top1"))
            assert sq is None
        else:
            logp, ent, mean, top1 = token_logprob_stats(h, w, targets, temperature=temp, entropy=True,
                                                        mean_logits=True, is_top1=True, backend=backend)
        ((logp * g).sum() + (ent * g_ent).sum()).backward()
        results.append((logp, ent, mean, top1, h.grad, w.grad))
    (t_logp, t_ent, t_mean, t_top1, t_gh, t_gw), (logp, ent, mean, top1, gh, gw) = results
    assert top1.dtype == t_top1.dtype == torch.bool and mean.dtype == t_mean.dtype == torch.float32
    assert mean.requires_grad is t_mean.requires_grad is False and top1.requires_grad is t_top1.requires_grad is False
    for ours, theirs in ((logp, t_logp), (ent, t_ent), (mean, t_mean)):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-5)
    if inputs == "integer":
        assert torch.equal(top1, t_top1) and top1.any()
    else:
        _, _, ambiguous = naive_metrics(hidden, weight, targets, temp)
        assert torch.equal(top1[~ambiguous], t_top1[~ambiguous]) and top1.any()
    for ours, theirs in ((gh, t_gh), (gw, t_gw)):
        torch.testing.assert_close(ours, theirs, atol=1e-4 * theirs.abs().max().item(), rtol=1e-4)


# ---------------------------------------------------------------- dispatch

def test_dispatch_cpu_uses_reference_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("BUDGETLIB_KERNELS", raising=False)
    assert backend_for("cpu") == "reference"
    hidden, weight, targets, _, _ = make_inputs(5, 8, 13, torch.float32)
    want = torch.log_softmax(hidden @ weight.T, -1).gather(-1, targets[:, None]).squeeze(-1)
    torch.testing.assert_close(token_logprobs(hidden, weight, targets), want, atol=1e-5, rtol=0)


def test_dispatch_without_triton(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(tlp_module, "triton_available", lambda: False)
    assert backend_for("cpu") == "reference"


@needs_triton
def test_dispatch_interpreter_runs_triton_and_off_forces_reference(interpret, monkeypatch):
    hidden, weight, targets, g, g_ent = make_inputs(6, 16, 40, torch.float32)
    want = naive(hidden, weight, targets, 1.0, g, g_ent)
    assert backend_for("cpu") == "triton"
    before = dict(interpret)
    assert_matches(run(token_logprobs, hidden, weight, targets, 1.0, g, g_ent), want, torch.float32)
    assert interpret["forward"] == before["forward"] + 1 and interpret["backward"] > before["backward"]

    monkeypatch.setenv("BUDGETLIB_KERNELS", "off")
    assert backend_for("cpu") == "reference"
    before = dict(interpret)
    assert_matches(run(token_logprobs, hidden, weight, targets, 1.0, g, g_ent), want, torch.float32)
    assert interpret == before  # no kernel launched


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("hidden, weight, targets, temperature, message", [
    (torch.zeros(4, 8), torch.zeros(10, 7), torch.zeros(4, dtype=torch.long), 1.0, "hidden size mismatch"),
    (torch.zeros(4, 8), torch.zeros(10, 8), torch.zeros(5, dtype=torch.long), 1.0, "targets shape"),
    (torch.zeros(4, 8), torch.zeros(10, 8), torch.tensor([0, 1, 10, 2]), 1.0, r"\[0, 10\).*\[0, 10\]"),
    (torch.zeros(4, 8), torch.zeros(10, 8), torch.tensor([0, -100, 3, 2]), 1.0, r"-100"),
    (torch.zeros(4, 8), torch.zeros(10, 8), torch.zeros(4), 1.0, "integer"),
    (torch.zeros(4, 8), torch.zeros(10, 8, dtype=torch.bfloat16), torch.zeros(4, dtype=torch.long), 1.0, "dtype"),
    (torch.zeros(4, 8, dtype=torch.float64), torch.zeros(10, 8, dtype=torch.float64),
     torch.zeros(4, dtype=torch.long), 1.0, "float32, bfloat16 or float16"),
    (torch.zeros(4, 8), torch.zeros(10, 8), torch.zeros(4, dtype=torch.long), 0.0, "temperature"),
    (torch.zeros(4, 8), torch.zeros(10, 8, 1), torch.zeros(4, dtype=torch.long), 1.0, "weight"),
])
@pytest.mark.parametrize("fn", [token_logprobs, token_logprobs_reference,
                                pytest.param(token_logprobs_triton, marks=needs_triton)])
def test_bad_input_raises_value_error(fn, hidden, weight, targets, temperature, message):
    with pytest.raises(ValueError, match=message):
        fn(hidden, weight, targets, temperature=temperature)


# ---------------------------------------------------------------- CUDA (larger shapes; skipped on CPU)

@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n, h, v", [(1, 64, 1000), (1537, 384, 50257), (4096, 1024, 32000)])
def test_cuda_matches_naive(monkeypatch, n, h, v, dtype):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("BUDGETLIB_KERNELS", raising=False)
    hidden, weight, targets, g, g_ent = make_inputs(n, h, v, dtype, device="cuda")
    assert backend_for(hidden.device) == "triton"
    want = naive(hidden, weight, targets, 0.8, g, g_ent)
    assert_matches(run(token_logprobs, hidden, weight, targets, 0.8, g, g_ent), want, dtype)


@needs_cuda
def test_cuda_memory_stays_below_logits(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    n, h, v = 4096, 1024, 32768  # full bf16 logits: 256 MiB
    hidden, weight, targets, g, _ = make_inputs(n, h, v, torch.bfloat16, device="cuda")
    hidden.requires_grad_()
    (token_logprobs(hidden, weight, targets) * g).sum().backward()  # autotune (and its buffers) outside the measurement
    hidden.grad = None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    logp = token_logprobs(hidden, weight, targets)
    assert torch.cuda.max_memory_allocated() - base < 16 * 2 ** 20  # forward: O(N) floats only
    (logp * g).sum().backward()  # weight frozen (LoRA-style): one [C, V] buffer + grad_hidden
    assert torch.cuda.max_memory_allocated() - base < 2 * n * v * 2 / 3
