"""Per-token log-probabilities of an LM head without the [N, V] logits.

``token_logprobs(hidden, weight, targets)`` returns

    logp[i] = log_softmax(hidden @ weight.T / temperature)[i, targets[i]]

(fp32) and with ``return_entropy=True`` also the entropy (nats) of each row's
temperature-scaled distribution. DPO and GRPO need exactly this for every
completion token; the naive route builds [tokens x vocab] logits (4 GiB in bf16
at 16k tokens x 128k vocab, more once upcast). Both implementations below
differentiate with respect to `hidden` and `weight`, through logp and entropy.

``token_logprob_stats`` returns the same and, on request, two per-token
metrics with trl 1.16's ``ChunkedLogProbFunction`` semantics (DPO logs them):
``mean_logits`` (mean over the vocabulary of the temperature-scaled logits
``z = h @ w.T / T``, fp32) and ``is_top1`` (bool: the target is the first
maximum of ``z``, as ``argmax`` picks it; a tie with an earlier token is not
top-1). Both are computed in the same pass and carry no gradient.

Two twins, same signature:

- `token_logprobs_triton`: fused Triton kernels (`_triton_logprobs`). Forward
  keeps O(N) floats per vocabulary slice and no logits at all; backward uses
  one [C, V] buffer (C about max(N*H, 2**25) / V rows) plus, when the weight
  needs a gradient, a [V, H] fp32 accumulator.
- `token_logprobs_reference`: plain PyTorch, chunked over tokens (C = 2**23 / V
  rows, at least 1), fp32 throughout; a few [C, V] fp32 temporaries per chunk
  and, for bf16/fp16 weights, an fp32 copy of the weight.

`token_logprobs` dispatches: ``BUDGETLIB_KERNELS=off`` forces the reference;
CUDA tensors use Triton when it is importable; CPU tensors use the reference,
except with ``TRITON_INTERPRET=1`` (Triton's CPU interpreter, for tests; it must
be set before triton is first imported in the process, or the reference runs).

Inputs: hidden [..., H] and weight [V, H] of one dtype (fp32, bf16 or fp16),
targets [...] integer in [0, V); under `torch.autocast` both are first cast
(differentiably) to the autocast dtype, as `F.linear` would be. Products are accumulated in fp32, so for bf16
inputs logp matches an fp32 computation on the same (bf16) values to ~1e-3;
it does not carry the rounding of bf16 logits. Tolerances the tests hold
(against float64 `log_softmax(h @ w.T / T).gather` on the same values): fp32
logp/entropy atol 1e-4 + rtol 1e-6, gradients rtol 1e-4 (atol 1e-5 scaled to the
gradient's size); bf16 logp/entropy atol 2e-3, gradients within 2% of their
largest entry (they are returned in bf16).
"""

from __future__ import annotations

import functools
import logging
import math
import os
from typing import NamedTuple, Optional

import torch

__all__ = ["token_logprobs", "token_logprobs_reference", "token_logprobs_triton", "token_logprob_stats",
           "TokenStats", "backend_for", "kernels_forced_off", "triton_available"]

log = logging.getLogger(__name__)
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_REFERENCE_CHUNK_ELEMENTS = 1 << 23  # fp32 logits elements per reference chunk (32 MiB)


class TokenStats(NamedTuple):
    """Per-token outputs of `token_logprob_stats`, shaped like `targets`; the
    ones not requested are None."""
    logp: torch.Tensor  # fp32, differentiable
    entropy: Optional[torch.Tensor] = None  # fp32 nats, differentiable
    mean_logits: Optional[torch.Tensor] = None  # fp32, no gradient
    is_top1: Optional[torch.Tensor] = None  # bool, no gradient


def kernels_forced_off() -> bool:
    """``BUDGETLIB_KERNELS=off`` (also 0/false/no): always use the reference."""
    return os.environ.get("BUDGETLIB_KERNELS", "").strip().lower() in ("off", "0", "false", "no")


@functools.cache
def triton_available() -> bool:
    """Whether `import triton` works (imported once, lazily)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _warn_interpreter_late() -> None:
    log.warning("TRITON_INTERPRET is set, but triton was imported before it was: token_logprobs uses the reference")


def interpret_requested() -> bool:
    """``TRITON_INTERPRET`` is set (1/true/on/yes), read now."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


def backend_for(device: torch.device | str) -> str:
    """``"triton"`` or ``"reference"``: what `token_logprobs` runs for tensors on
    `device` now. Imports triton only when it could be used (CUDA, or CPU with
    ``TRITON_INTERPRET`` set), so a CPU run never pins Triton's mode early."""
    device = torch.device(device)
    if kernels_forced_off():
        return "reference"
    if device.type == "cuda":
        return "triton" if triton_available() else "reference"
    if device.type == "cpu" and interpret_requested() and triton_available():
        from ._triton_logprobs import interpreter_live

        if interpreter_live():
            return "triton"
        _warn_interpreter_late()
    return "reference"


def _flatten_checked(hidden, weight, targets, temperature):
    """Validate and flatten to (hidden [N, H], weight, targets [N] int64, out shape)."""
    for name, x in (("hidden", hidden), ("weight", weight), ("targets", targets)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if hidden.dtype not in _DTYPES:
        raise ValueError(f"hidden must be float32, bfloat16 or float16, got {hidden.dtype}")
    if weight.dtype != hidden.dtype:
        raise ValueError(f"hidden and weight must share a dtype, got {hidden.dtype} and {weight.dtype}")
    if hidden.dim() < 1 or weight.dim() != 2:
        raise ValueError(f"expected hidden [..., H] and weight [V, H], got {tuple(hidden.shape)} and "
                         f"{tuple(weight.shape)}")
    if weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"hidden size mismatch: hidden {tuple(hidden.shape)} has H={hidden.shape[-1]}, "
                         f"weight {tuple(weight.shape)} has H={weight.shape[1]}")
    if weight.shape[0] == 0:
        raise ValueError("weight has an empty vocabulary (V = 0)")
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise ValueError(f"targets must be an integer tensor, got {targets.dtype}")
    if tuple(targets.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(f"targets shape {tuple(targets.shape)} must equal hidden.shape[:-1] = "
                         f"{tuple(hidden.shape[:-1])}")
    if hidden.device != weight.device or hidden.device != targets.device:
        raise ValueError(f"hidden, weight and targets must be on one device, got {hidden.device}, "
                         f"{weight.device}, {targets.device}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    flat_targets = targets.reshape(-1).long()
    vocab = weight.shape[0]
    if flat_targets.numel():
        lo, hi = torch.stack([flat_targets.min(), flat_targets.max()]).tolist()
        if lo < 0 or hi >= vocab:
            raise ValueError(f"targets must lie in [0, {vocab}) (the vocabulary of weight), got values in "
                             f"[{lo}, {hi}]; replace ignored positions (e.g. -100) by a valid id and mask "
                             f"their log-probs afterwards")
    return hidden.reshape(-1, hidden.shape[-1]), weight, flat_targets, tuple(targets.shape)


def _run(impl, hidden, weight, targets, temperature, flags) -> TokenStats:
    """Cast under autocast, validate, flatten, run ``impl(h, w, t, temperature,
    with_entropy, with_mean, with_top1)`` -> 4-tuple, reshape to targets' shape."""
    if isinstance(hidden, torch.Tensor) and isinstance(weight, torch.Tensor) and \
            torch.is_autocast_enabled(hidden.device.type):  # what F.linear would compute in, differentiably
        dtype = torch.get_autocast_dtype(hidden.device.type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    h, w, t, shape = _flatten_checked(hidden, weight, targets, temperature)
    with torch.autocast(h.device.type, enabled=False):
        out = impl(h, w, t, float(temperature), *(bool(f) for f in flags))
    return TokenStats(*(None if x is None else x.reshape(shape) for x in out))


def _triton_impl(chunk_rows=None, vocab_splits=None):
    def impl(h, w, t, temp, ent, mean, top1):
        from ._triton_logprobs import TritonTokenLogprobs

        return TritonTokenLogprobs.apply(h.contiguous(), w.contiguous(), t.contiguous(), temp, ent, chunk_rows,
                                         vocab_splits, mean, top1)

    return impl


def _reference_impl(chunk_rows=None):
    def impl(h, w, t, temp, ent, mean, top1):
        return ReferenceTokenLogprobs.apply(h, w, t, temp, ent, chunk_rows, mean, top1)

    return impl


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                   temperature: float = 1.0, return_entropy: bool = False):
    """log_softmax(hidden @ weight.T / temperature)[..., targets] as fp32 [...]
    (with `return_entropy`: ``(logp, entropy)``), never building the full
    logits. Runs `token_logprobs_triton` or `token_logprobs_reference` as
    `backend_for(hidden.device)` says (see the module docstring for memory
    bounds and tolerances). Raises ValueError on mismatched shapes, dtypes or
    devices and on targets outside [0, V)."""
    backend = backend_for(hidden.device) if isinstance(hidden, torch.Tensor) else "reference"
    log.debug("token_logprobs: %s backend", backend)
    impl = token_logprobs_triton if backend == "triton" else token_logprobs_reference
    return impl(hidden, weight, targets, temperature=temperature, return_entropy=return_entropy)


def token_logprob_stats(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                        temperature: float = 1.0, entropy: bool = False, mean_logits: bool = False,
                        is_top1: bool = False, backend: str | None = None, chunk_rows: int | None = None,
                        vocab_splits: int | None = None) -> TokenStats:
    """`token_logprobs` plus, on request, the entropy, the mean (temperature-
    scaled) logit and whether the target is the top-1 token, from one pass over
    the vocabulary: a `TokenStats` (unrequested fields None). `backend`:
    ``"triton"``, ``"reference"`` or None (`backend_for(hidden.device)`);
    `chunk_rows` / `vocab_splits` tune the chosen twin (`vocab_splits` is
    Triton's only)."""
    if backend is None:
        backend = backend_for(hidden.device) if isinstance(hidden, torch.Tensor) else "reference"
    if backend == "triton":
        impl = _triton_impl(chunk_rows, vocab_splits)
    elif backend == "reference":
        impl = _reference_impl(chunk_rows)
    else:
        raise ValueError(f"backend must be 'triton', 'reference' or None, got {backend!r}")
    log.debug("token_logprob_stats: %s backend", backend)
    return _run(impl, hidden, weight, targets, temperature, (entropy, mean_logits, is_top1))


def _logp_or_pair(stats: TokenStats, return_entropy: bool):
    return (stats.logp, stats.entropy) if return_entropy else stats.logp


def token_logprobs_triton(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                          temperature: float = 1.0, return_entropy: bool = False,
                          chunk_rows: int | None = None, vocab_splits: int | None = None):
    """The Triton twin (needs triton; CUDA tensors, or CPU tensors under
    ``TRITON_INTERPRET=1``). `chunk_rows` (backward rows per [C, V] buffer)
    and `vocab_splits` (forward vocabulary slices) default to the sizes in
    `_triton_logprobs`; they exist for tests and tuning."""
    stats = _run(_triton_impl(chunk_rows, vocab_splits), hidden, weight, targets, temperature,
                 (return_entropy, False, False))
    return _logp_or_pair(stats, return_entropy)


def token_logprobs_reference(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                             temperature: float = 1.0, return_entropy: bool = False,
                             chunk_rows: int | None = None):
    """The plain-PyTorch twin: same result, chunked over tokens (`chunk_rows`
    rows at a time, default 2**23 / V), fp32 math, recomputes the logits in
    backward instead of storing them. Runs anywhere torch runs."""
    stats = _run(_reference_impl(chunk_rows), hidden, weight, targets, temperature, (return_entropy, False, False))
    return _logp_or_pair(stats, return_entropy)


def _reference_rows(n_rows: int, vocab: int, chunk_rows: int | None) -> int:
    return max(1, chunk_rows or _REFERENCE_CHUNK_ELEMENTS // vocab)


class ReferenceTokenLogprobs(torch.autograd.Function):
    """``apply(hidden [N, H], weight [V, H], targets [N], temperature,
    with_entropy, chunk_rows, with_mean=False, with_top1=False)`` ->
    ``(logp, entropy, mean_logits, is_top1)`` (None where not requested): the
    chunked PyTorch computation with an explicit backward (dz = (g (onehot - p)
    - g_ent p (z - E_p z)) / T per chunk), mirroring the Triton kernels' math.
    mean_logits and is_top1 are non-differentiable metrics."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, with_entropy, chunk_rows=None, with_mean=False,
                with_top1=False):
        ctx.set_materialize_grads(False)
        n, vocab = hidden.shape[0], weight.shape[0]
        inv_temp = 1.0 / temperature
        w32 = weight.float()
        logp = torch.empty(n, device=hidden.device, dtype=torch.float32)
        lse = torch.empty_like(logp)
        ez = torch.empty_like(logp) if with_entropy else None
        mean = torch.empty_like(logp) if with_mean else None
        top1 = torch.empty(n, device=hidden.device, dtype=torch.bool) if with_top1 else None
        rows = _reference_rows(n, vocab, chunk_rows)
        ent = torch.empty_like(logp) if with_entropy else None
        for start in range(0, n, rows):
            sl = slice(start, start + rows)
            z = (hidden[sl].float() @ w32.t()).mul_(inv_temp)
            if with_mean:
                mean[sl] = z.sum(dim=1) / vocab
            if with_top1:
                top1[sl] = z.argmax(dim=1) == targets[sl]  # argmax: the first maximum
            m = z.amax(dim=1, keepdim=True)
            zm = z.sub_(m)  # z - max, in place: no cancellation between logit-sized numbers below
            e = zm.exp()
            total = e.sum(dim=1)
            log_s = total.log()
            lse[sl] = m.squeeze(1) + log_s
            logp[sl] = zm.gather(1, targets[sl, None]).squeeze(1) - log_s
            if with_entropy:  # E_p[z - m] (self-normalised), entropy = log s - E_p[z - m]
                shifted = e.mul_(zm).sum(dim=1).div_(total)
                ez[sl] = m.squeeze(1) + shifted
                ent[sl] = log_s - shifted
        ctx.save_for_backward(hidden, weight, targets, lse, ez)
        ctx.inv_temp, ctx.rows = inv_temp, rows
        ctx.mark_non_differentiable(*(x for x in (mean, top1) if x is not None))
        return logp, ent, mean, top1

    @staticmethod
    def backward(ctx, g_logp, g_ent=None, *_metrics):
        hidden, weight, targets, lse, ez = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if (g_logp is None and g_ent is None) or not (need_h or need_w):
            return (None,) * 8
        with torch.autocast(hidden.device.type, enabled=False):
            grad_h, grad_w = ReferenceTokenLogprobs._grads(ctx, hidden, weight, targets, lse, ez, g_logp, g_ent,
                                                           need_h, need_w)
        return (grad_h, grad_w) + (None,) * 6

    @staticmethod
    def _grads(ctx, hidden, weight, targets, lse, ez, g_logp, g_ent, need_h, need_w):
        w32 = weight.float()
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if need_w else None
        for start in range(0, hidden.shape[0], ctx.rows):
            sl = slice(start, start + ctx.rows)
            h32 = hidden[sl].float()
            z = (h32 @ w32.t()).mul_(ctx.inv_temp)
            p = (z - lse[sl, None]).exp_()
            dz = torch.zeros_like(z)
            if g_logp is not None:
                g = g_logp[sl].float()
                dz.sub_(p * g[:, None]).scatter_add_(1, targets[sl, None], g[:, None])
            if g_ent is not None:
                dz.sub_(p.mul_(z.sub_(ez[sl, None])).mul_(g_ent[sl, None].float()))
            dz.mul_(ctx.inv_temp)
            if need_h:
                grad_h[sl] = (dz @ w32).to(hidden.dtype)
            if need_w:
                grad_w.addmm_(dz.t(), h32)
        return grad_h, (grad_w.to(weight.dtype) if need_w else None)
