"""Route trl's fused LM head through `budgetlib.kernels.token_logprob_stats`.

trl 1.16's DPO and GRPO trainers (also SFT, KTO, RLOO) patch the model with
``add_fused_lm_head``; its forward calls the module global
``trl.trainer.utils._ChunkedLogProbFunction.apply(hidden [N, H], weight [V, H],
bias, targets [N], temperature, chunk_size, final_logit_softcapping,
logit_scale, outputs)`` and unpacks ``(log_probs, entropy, log_sum_sq_probs,
mean_logits, is_top1)``, each [N] or None where not in `outputs`. `install`
swaps that global for `BudgetlibChunkedLogProb`, whose ``apply`` returns the
same five-tuple from our op (Triton on CUDA, the chunked PyTorch reference
elsewhere, as `budgetlib.kernels.backend_for` says) when it can:

- no LM-head bias, no final-logit softcapping, ``logit_scale == 1``;
- `outputs` within log_probs / entropy / mean_logits / is_top1 (DPO asks for
  all four, GRPO for log_probs + entropy); ``log_sum_sq_probs`` (DPO's WPO
  weighting, ``use_weighting=True``) is not implemented here;
- fp32/bf16/fp16 on a CPU or CUDA device, plain tensors (no DTensor), and not
  under DeepSpeed ZeRO-3 (trl re-gathers the sharded head in its backward;
  ours does not).

Anything else is delegated, unchanged, to trl's own ``ChunkedLogProbFunction``.
`call_counts` says how many calls each path took (``budgetlib``,
``budgetlib:<backend>``, ``trl``, ``trl:<reason>``), so tests can assert that
our op really ran.

Semantics matched (trl 1.16.0, ``trl/kernels/chunked_logprob.py``): logits
``z = (h @ w.T) / temperature`` in the compute dtype (the autocast dtype under
autocast, else the hidden states'; a weight of another dtype is cast to it);
``log_probs = z_t - logsumexp(z)`` and ``entropy``, both fp32 and
differentiable w.r.t. hidden and weight; ``mean_logits = Σ z / V`` (fp32) and
``is_top1 = (z_t >= max z) & (z_t > max of z left of t)`` (bool: the first
maximum, as argmax), both non-differentiable. One deliberate difference: trl
rounds each logits tile to bf16/fp16 before folding it, ours accumulates the
products in fp32 throughout, so in bf16 the two differ by about bf16's
rounding of the logits (in fp32 they agree to ~1e-5). With
``cast_lm_head_to_fp32`` and a bf16 head, the weight is cast to fp32 once per
call (a [V, H] fp32 copy) where trl casts it tile by tile.

The hook targets a private name, so `install` refuses any trl other than
`PINNED_TRL` and checks the Function's argument names.
"""

from __future__ import annotations

import inspect
import logging
from collections import Counter
from contextlib import contextmanager

import torch

__all__ = ["PINNED_TRL", "SUPPORTED_OUTPUTS", "BudgetlibChunkedLogProb", "TRLVersionError", "install", "uninstall",
           "installed", "use_budgetlib_logprobs", "call_counts", "reset_call_counts"]

log = logging.getLogger(__name__)

PINNED_TRL = "1.16.0"
#: Output names of trl's fused head that our op computes; the rest go to trl.
SUPPORTED_OUTPUTS = frozenset({"log_probs", "entropy", "mean_logits", "is_top1"})
_TRL_ARGS = ("hidden", "weight", "bias", "targets", "temperature", "chunk_size", "final_logit_softcapping",
             "logit_scale", "outputs")
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

_CALLS: Counter = Counter()
_saved: list = []  # [the object install() replaced], while installed


class TRLVersionError(RuntimeError):
    """The installed trl is not the version the hook was written against."""


def call_counts() -> dict[str, int]:
    """Calls so far: ``budgetlib`` (routed to our op; ``budgetlib:triton`` /
    ``budgetlib:reference`` by backend) and ``trl`` (delegated; ``trl:<reason>``)."""
    return dict(_CALLS)


def reset_call_counts() -> None:
    _CALLS.clear()


def _trl_function():
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction

    return ChunkedLogProbFunction


def _delegate_reason(hidden, weight, bias, final_logit_softcapping, logit_scale, outputs) -> str | None:
    """Why this call must go to trl's Function, or None when ours can take it."""
    if bias is not None:
        return "bias"
    if final_logit_softcapping is not None:
        return "softcap"
    if logit_scale != 1.0:
        return "logit_scale"
    unsupported = sorted(set(outputs) - SUPPORTED_OUTPUTS)
    if unsupported:
        return "outputs=" + ",".join(unsupported)
    from torch.distributed.tensor import DTensor

    if isinstance(hidden, DTensor) or isinstance(weight, DTensor):
        return "dtensor"
    if hidden.device.type not in ("cpu", "cuda"):
        return "device"
    if hidden.dtype not in _DTYPES or weight.dtype not in _DTYPES:
        return "dtype"
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        return "zero3"
    return None


class BudgetlibChunkedLogProb:
    """Drop-in for ``trl.trainer.utils._ChunkedLogProbFunction`` (only ``apply``
    is used there): same arguments, same five-tuple."""

    @staticmethod
    def apply(hidden, weight, bias, targets, temperature, chunk_size, final_logit_softcapping=None,
              logit_scale=1.0, outputs=("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")):
        reason = _delegate_reason(hidden, weight, bias, final_logit_softcapping, logit_scale, outputs)
        if reason is not None:
            _CALLS["trl"] += 1
            _CALLS[f"trl:{reason}"] += 1
            log.debug("fused log-probs: delegated to trl (%s)", reason)
            return _trl_function().apply(hidden, weight, bias, targets, temperature, chunk_size,
                                         final_logit_softcapping, logit_scale, outputs)
        from ..kernels import backend_for, token_logprob_stats

        device = hidden.device.type
        if not torch.is_autocast_enabled(device) and weight.dtype != hidden.dtype:
            weight = weight.to(hidden.dtype)  # trl computes in the hidden states' dtype (differentiable cast)
        backend = backend_for(hidden.device)
        stats = token_logprob_stats(hidden, weight, targets, temperature=float(temperature),
                                    entropy="entropy" in outputs, mean_logits="mean_logits" in outputs,
                                    is_top1="is_top1" in outputs, backend=backend)
        if not _CALLS["budgetlib"]:
            log.info("fused log-probs: trl's LM head runs budgetlib's token_logprobs (%s backend)", backend)
        _CALLS["budgetlib"] += 1
        _CALLS[f"budgetlib:{backend}"] += 1
        return stats.logp, stats.entropy, None, stats.mean_logits, stats.is_top1


def _trl_utils():
    """``trl.trainer.utils`` after checking the pinned version and the hooked
    Function's signature; raises TRLVersionError otherwise."""
    import trl

    if trl.__version__ != PINNED_TRL:
        raise TRLVersionError(
            f"budgetlib's fused log-probs hook replaces trl.trainer.utils._ChunkedLogProbFunction, a private name "
            f"of trl {PINNED_TRL}; trl {trl.__version__} is installed. Install trl=={PINNED_TRL}, or turn the hook "
            f"off (TrainConfig(fused_logprobs=False)).")
    from trl.trainer import utils

    if not hasattr(utils, "_ChunkedLogProbFunction"):
        raise TRLVersionError(f"trl {trl.__version__} has no trl.trainer.utils._ChunkedLogProbFunction")
    args = tuple(inspect.signature(_trl_function().forward).parameters)[1:]
    if args != _TRL_ARGS:
        raise TRLVersionError(f"trl's ChunkedLogProbFunction.forward takes {args}, the hook expects {_TRL_ARGS}")
    return utils


def installed() -> bool:
    """Whether trl's fused head currently routes through `BudgetlibChunkedLogProb`."""
    import sys

    utils = sys.modules.get("trl.trainer.utils")
    return utils is not None and getattr(utils, "_ChunkedLogProbFunction", None) is BudgetlibChunkedLogProb


def install() -> bool:
    """Swap trl's ``_ChunkedLogProbFunction`` for `BudgetlibChunkedLogProb`.
    Idempotent: returns False when it was already installed. Raises
    TRLVersionError unless trl is `PINNED_TRL`."""
    utils = _trl_utils()
    if utils._ChunkedLogProbFunction is BudgetlibChunkedLogProb:
        return False
    _saved[:] = [utils._ChunkedLogProbFunction]
    utils._ChunkedLogProbFunction = BudgetlibChunkedLogProb
    log.debug("fused log-probs hook installed")
    return True


def uninstall() -> bool:
    """Put back what `install` replaced; returns False when not installed."""
    if not installed():
        return False
    from trl.trainer import utils

    utils._ChunkedLogProbFunction = _saved.pop() if _saved else _trl_function()
    log.debug("fused log-probs hook removed")
    return True


@contextmanager
def use_budgetlib_logprobs():
    """``with use_budgetlib_logprobs(): trainer.train()``: the hook for the
    block. Nests: only the context that installed it removes it."""
    newly = install()
    try:
        yield
    finally:
        if newly:
            uninstall()
