"""Fused ops with plain-PyTorch twins.

- `token_logprobs`: per-token log-probabilities (and entropy) of an LM head,
  ``log_softmax(hidden @ weight.T / T)[targets]``, without the [N, V] logits;
  Triton on CUDA, the chunked PyTorch reference elsewhere.
- `token_logprob_stats`: the same plus, on request, the per-token mean logit
  and whether the target is top-1 (trl's DPO metrics), from the same pass.

``BUDGETLIB_KERNELS=off`` forces every op onto its reference twin. Triton is
optional (the ``kernels`` extra) and imported only when a kernel runs.
"""

from .token_logprobs import (TokenStats, backend_for, kernels_forced_off, token_logprob_stats, token_logprobs,
                             token_logprobs_reference, token_logprobs_triton, triton_available)

__all__ = ["token_logprobs", "token_logprob_stats", "TokenStats", "token_logprobs_reference",
           "token_logprobs_triton", "backend_for", "kernels_forced_off", "triton_available"]
