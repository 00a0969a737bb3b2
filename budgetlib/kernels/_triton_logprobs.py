"""Triton kernels behind `budgetlib.kernels.token_logprobs` (imported lazily).

Forward: one fused kernel. Each program owns ``BLOCK_N`` token rows and one
slice of the vocabulary; it walks that slice in ``BLOCK_V`` tiles, computes
each logits tile with ``tl.dot`` over ``BLOCK_H`` steps of the hidden size
(fp32 accumulator, IEEE fp32 for fp32 inputs), and folds it into an online
log-sum-exp: running max ``m``, ``s = Σ exp(z - m)``, for the entropy
``a = Σ exp(z - m) (z - m)`` (shifted, so entropy = log s - a / s has no
cancellation between two logit-sized numbers), and the target's logit; on
request also the metrics trl's DPO logs: ``zs = Σ z`` (mean logit) and
``mbt``, the largest logit left of the target (the target is top-1 iff
``z_t >= m`` and ``z_t > mbt``: the first maximum, as ``argmax``). Logits never
leave registers.
Vocabulary slices ("splits", so small token counts still fill the GPU) are
merged by a few [splits, N] torch ops. Extra memory: O(splits * N) floats.

Backward: per chunk of ``C`` rows one kernel recomputes the logits tile by tile
and writes ``dz = (g * (onehot - p) - g_ent * p * (z - E_p[z])) / T`` into a
[C, V] buffer in the input dtype; two GEMMs then give ``grad_hidden = dz @ W``
and ``grad_weight += dz.T @ h`` (accumulated in fp32, in vocabulary slices so
the temporary stays [8192, H]). Extra memory: C * V elements of the input
dtype, plus a [V, H] fp32 accumulator only when the weight needs a gradient.

With ``TRITON_INTERPRET=1`` the same kernels run on CPU tensors (tests). The
variable must be set before triton is first imported (Triton interprets its own
helpers only then; `interpreter_live` checks); our kernels are jitted per mode
at first launch. GPU tiles: a first guess, autotuned per (V, H, dtype), compiled
for sm_80/sm_90 in the tests but not yet timed (benchmarks/token_logprobs.py).
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl
import triton.language.standard as _tl_standard

from .token_logprobs import interpret_requested as interpret_mode

__all__ = ["TritonTokenLogprobs", "LAUNCHES", "interpret_mode", "interpreter_live", "default_chunk_rows"]

#: Kernel launches so far, by kind; tests assert that the Triton path really ran.
LAUNCHES = {"forward": 0, "backward": 0}

_INTERPRET_BLOCKS = dict(BLOCK_N=16, BLOCK_V=32, BLOCK_H=16)  # small tiles: masks and loops get exercised
_GPU_CONFIGS = [  # (BLOCK_N, BLOCK_V, BLOCK_H, warps, stages); autotuned per (V, H, dtype); OutOfResources ones skipped
    (64, 128, 64, 4, 3), (128, 128, 64, 8, 3), (64, 256, 64, 8, 3), (128, 64, 64, 4, 4), (32, 128, 64, 4, 4),
    (64, 64, 32, 4, 2),
]
_SPLIT_ALIGN = 256  # vocabulary slices start at multiples of this (>= every BLOCK_V)
_WGRAD_SLICE = 8192  # vocabulary rows per temporary in the bf16/fp16 weight-gradient accumulation


def interpreter_live() -> bool:
    """`interpret_mode()` and the interpreter can actually run here: Triton
    decides at ``import triton`` whether its own helpers (``tl.sum``'s combine
    function, ...) are interpreted, so the variable must be set before that."""
    if not interpret_mode():
        return False
    helper = getattr(_tl_standard, "_sum_combine", None)
    return helper is None or type(helper).__name__ == "InterpretedFunction"


def _check_runnable(device: torch.device) -> None:
    if device.type == "cpu" and not interpreter_live():
        raise RuntimeError("the Triton token_logprobs kernels need CUDA tensors, or CPU tensors with "
                           "TRITON_INTERPRET=1 set before triton is first imported")


@triton.jit
def _logit_tile(h_rows, w_cols, row_ok, col_ok, H, inv_temp, IEEE: tl.constexpr, UPCAST: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    """One [BLOCK_N x BLOCK_V] tile of logits / temperature: the rows' hidden states times the columns'
    LM-head weights, accumulated in fp32 over H in BLOCK_H steps (masked entries read 0)."""
    acc = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
    for k0 in range(0, H, BLOCK_H):
        ks = k0 + tl.arange(0, BLOCK_H)
        k_ok = ks < H
        hb = tl.load(h_rows + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        wb = tl.load(w_cols + ks[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if UPCAST:
            hb, wb = hb.to(tl.float32), wb.to(tl.float32)
        if IEEE:
            acc = tl.dot(hb, wb, acc, input_precision="ieee")
        else:
            acc = tl.dot(hb, wb, acc)
    return acc * inv_temp


def _fwd_kernel(h_ptr, w_ptr, tgt_ptr, m_ptr, s_ptr, a_ptr, tz_ptr, zs_ptr, mbt_ptr,
                N, V, H, stride_h, stride_w, v_per_split, inv_temp,
                ENTROPY: tl.constexpr, MEAN: tl.constexpr, TOP1: tl.constexpr,
                IEEE: tl.constexpr, UPCAST: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    tgt = tl.load(tgt_ptr + rows, mask=row_ok, other=-1)
    h_rows = h_ptr + rows.to(tl.int64)[:, None] * stride_h
    m = tl.full([BLOCK_N], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_N], tl.float32)
    a = tl.zeros([BLOCK_N], tl.float32)
    tz = tl.zeros([BLOCK_N], tl.float32)
    zs = tl.zeros([BLOCK_N], tl.float32)
    mbt = tl.full([BLOCK_N], float("-inf"), tl.float32)
    v_start = split * v_per_split
    v_end = tl.minimum(v_start + v_per_split, V)
    for v0 in range(v_start, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < v_end
        w_cols = w_ptr + cols.to(tl.int64)[None, :] * stride_w
        z = _logit_tile(h_rows, w_cols, row_ok, col_ok, H, inv_temp, IEEE, UPCAST, BLOCK_N, BLOCK_V, BLOCK_H)
        # z is finite everywhere (masked columns read zeros) ...
        m_new = tl.maximum(m, tl.max(tl.where(col_ok[None, :], z, float("-inf")), axis=1))
        rescale = tl.exp(m - m_new)
        zm = z - m_new[:, None]
        e = tl.where(col_ok[None, :], tl.exp(zm), 0.0)  # ... and weigh nothing
        if ENTROPY:  # re-centre the running sum on m_new (s = 0 while m = -inf: no 0 * inf)
            shift = tl.where(s > 0, m - m_new, 0.0) * s
            a = (a + shift) * rescale + tl.sum(e * zm, axis=1)
        s = s * rescale + tl.sum(e, axis=1)
        tz += tl.sum(tl.where(cols[None, :] == tgt[:, None], z, 0.0), axis=1)
        if MEAN:
            zs += tl.sum(tl.where(col_ok[None, :], z, 0.0), axis=1)
        if TOP1:  # largest logit strictly left of the target (ties before it make argmax pick the earlier one)
            left = col_ok[None, :] & (cols[None, :] < tgt[:, None])
            mbt = tl.maximum(mbt, tl.max(tl.where(left, z, float("-inf")), axis=1))
        m = m_new
    out = split * N + rows
    tl.store(m_ptr + out, m, mask=row_ok)
    tl.store(s_ptr + out, s, mask=row_ok)
    tl.store(tz_ptr + out, tz, mask=row_ok)
    if ENTROPY:
        tl.store(a_ptr + out, a, mask=row_ok)
    if MEAN:
        tl.store(zs_ptr + out, zs, mask=row_ok)
    if TOP1:
        tl.store(mbt_ptr + out, mbt, mask=row_ok)


def _bwd_kernel(h_ptr, w_ptr, tgt_ptr, lse_ptr, g_ptr, ge_ptr, ez_ptr, dz_ptr,
                N, V, H, stride_h, stride_w, stride_dz, inv_temp,
                ENTROPY_GRAD: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = rows < N
    col_ok = cols < V
    h_rows = h_ptr + rows.to(tl.int64)[:, None] * stride_h
    w_cols = w_ptr + cols.to(tl.int64)[None, :] * stride_w
    z = _logit_tile(h_rows, w_cols, row_ok, col_ok, H, inv_temp, IEEE, UPCAST, BLOCK_N, BLOCK_V, BLOCK_H)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    g = tl.load(g_ptr + rows, mask=row_ok, other=0.0)
    tgt = tl.load(tgt_ptr + rows, mask=row_ok, other=-1)
    p = tl.exp(z - lse[:, None])
    dz = tl.where(cols[None, :] == tgt[:, None], g[:, None], 0.0) - g[:, None] * p
    if ENTROPY_GRAD:  # d entropy / d z = -p * (z - E_p[z])
        ge = tl.load(ge_ptr + rows, mask=row_ok, other=0.0)
        ez = tl.load(ez_ptr + rows, mask=row_ok, other=0.0)
        dz -= ge[:, None] * p * (z - ez[:, None])
    dz = dz * inv_temp
    dz_ptrs = dz_ptr + rows.to(tl.int64)[:, None] * stride_dz + cols[None, :]
    tl.store(dz_ptrs, dz.to(dz_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@functools.cache
def _kernels(interpret: bool):
    """(forward, backward) kernels for this mode: fixed small tiles in the
    interpreter, autotuned tiles on a GPU."""
    fwd, bwd = triton.jit(_fwd_kernel), triton.jit(_bwd_kernel)
    if not interpret:
        configs = [triton.Config(dict(BLOCK_N=n, BLOCK_V=v, BLOCK_H=h), num_warps=w, num_stages=st)
                   for n, v, h, w, st in _GPU_CONFIGS]
        fwd = triton.autotune(configs, key=["V", "H", "ENTROPY", "MEAN", "TOP1"])(fwd)
        bwd = triton.autotune(configs, key=["V", "H", "ENTROPY_GRAD"])(bwd)
    return fwd, bwd


def _vocab_slices(n_rows: int, vocab: int, device: torch.device, splits: int | None) -> tuple[int, int]:
    """(number of vocabulary slices, columns per slice). Default: enough
    programs to fill the GPU about four times over; one slice in the interpreter."""
    if splits is None:
        if device.type != "cuda":
            splits = 1
        else:
            sms = torch.cuda.get_device_properties(device).multi_processor_count
            splits = max(1, min(math.ceil(4 * sms / triton.cdiv(n_rows, 64)), triton.cdiv(vocab, 2048)))
    align = _INTERPRET_BLOCKS["BLOCK_V"] if device.type != "cuda" else _SPLIT_ALIGN
    per = triton.cdiv(triton.cdiv(vocab, max(1, splits)), align) * align
    return triton.cdiv(vocab, per), per


def default_chunk_rows(n_rows: int, vocab: int, hidden: int) -> int:
    """Rows per backward chunk: the [C, V] gradient buffer holds about
    max(N * H, 2**25) elements (no more than the hidden states, or 64 MiB of
    bf16), in whole multiples of 64 rows, at least 64 rows, at most N."""
    rows = max(n_rows * hidden, 1 << 25) // max(vocab, 1)
    return max(1, min(n_rows, max(64, rows // 64 * 64)))


def _launch_kw(interpret: bool, dtype: torch.dtype) -> dict:
    """Tile sizes (interpreter only; the GPU autotunes) and the dot flags:
    IEEE fp32 products for fp32 inputs; in the interpreter bf16/fp16 tiles are
    upcast first, since Triton 3.9's interpreter multiplies bf16 tiles as raw
    uint16 bits in `tl.dot` (exact either way: products of bf16 values are
    exact in fp32, and the GPU's tensor cores accumulate in fp32 too)."""
    upcast = interpret and dtype != torch.float32
    flags = dict(IEEE=dtype == torch.float32 or upcast, UPCAST=upcast)
    return {**_INTERPRET_BLOCKS, **flags} if interpret else flags


def _forward(hidden, weight, targets, inv_temp, with_entropy, with_mean, with_top1, splits):
    """(logp, lse, E_p[z], entropy, mean logit, is_top1), all [N]; the last four
    None unless requested."""
    n, h = hidden.shape
    v = weight.shape[0]
    interpret = interpret_mode()
    fwd, _ = _kernels(interpret)
    n_splits, per = _vocab_slices(n, v, hidden.device, splits)
    part = torch.empty((6, n_splits, n), device=hidden.device, dtype=torch.float32)
    m, s, a, tz, zs, mbt = part.unbind(0)

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK_N"]), n_splits)

    fwd[grid](hidden, weight, targets, m, s, a, tz, zs, mbt, n, v, h, hidden.stride(0), weight.stride(0), per,
              inv_temp, ENTROPY=with_entropy, MEAN=with_mean, TOP1=with_top1, **_launch_kw(interpret, hidden.dtype))
    LAUNCHES["forward"] += 1
    big_m = m.max(dim=0).values
    rescale = torch.exp(m - big_m)
    total = (s * rescale).sum(dim=0)
    log_total = torch.log(total)
    lse = big_m + log_total
    target_z = tz.sum(dim=0)  # one slice holds the target, the others add exact zeros
    logp = (target_z - big_m) - log_total
    ez = ent = None
    if with_entropy:
        shifted = ((a + s * (m - big_m)) * rescale).sum(dim=0) / total  # E_p[z] - big_m
        ez, ent = big_m + shifted, log_total - shifted
    mean = zs.sum(dim=0) / v if with_mean else None
    top1 = (target_z >= big_m) & (target_z > mbt.max(dim=0).values) if with_top1 else None
    return logp, lse, ez, ent, mean, top1


def _accumulate_weight_grad(acc: torch.Tensor, dz: torch.Tensor, h: torch.Tensor) -> None:
    """acc (fp32 [V, H]) += dz.T @ h, with fp32 accumulation across chunks."""
    if dz.dtype == torch.float32:
        acc.addmm_(dz.t(), h)
        return
    h32 = h.float()  # fp32 products: a bf16 product per chunk, rounded before the sum, biases the gradient
    for v0 in range(0, acc.shape[0], _WGRAD_SLICE):
        acc[v0:v0 + _WGRAD_SLICE].addmm_(dz[:, v0:v0 + _WGRAD_SLICE].t().float(), h32)


def _backward(hidden, weight, targets, lse, ez, g_logp, g_ent, inv_temp, need_h, need_w, chunk_rows):
    n, h = hidden.shape
    v = weight.shape[0]
    interpret = interpret_mode()
    _, bwd = _kernels(interpret)
    g = torch.zeros_like(lse) if g_logp is None else g_logp.float().contiguous()
    ge = None if g_ent is None else g_ent.float().contiguous()
    grad_h = torch.empty_like(hidden) if need_h else None
    grad_w = torch.zeros((v, h), device=hidden.device, dtype=torch.float32) if need_w else None
    rows = chunk_rows or default_chunk_rows(n, v, h)
    dz_buf = torch.empty((min(rows, n), v), device=hidden.device, dtype=hidden.dtype)
    for start in range(0, n, rows):
        c = min(rows, n - start)
        dz = dz_buf[:c]

        def grid(meta):
            return (triton.cdiv(c, meta["BLOCK_N"]), triton.cdiv(v, meta["BLOCK_V"]))

        sl = slice(start, start + c)
        bwd[grid](hidden[sl], weight, targets[sl], lse[sl], g[sl], g if ge is None else ge[sl],
                  lse[sl] if ez is None else ez[sl], dz, c, v, h, hidden.stride(0), weight.stride(0), dz.stride(0),
                  inv_temp, ENTROPY_GRAD=ge is not None, **_launch_kw(interpret, hidden.dtype))
        LAUNCHES["backward"] += 1
        if need_h:
            torch.mm(dz, weight, out=grad_h[sl])
        if need_w:
            _accumulate_weight_grad(grad_w, dz, hidden[sl])
    return grad_h, (grad_w.to(weight.dtype) if need_w else None)


class TritonTokenLogprobs(torch.autograd.Function):
    """``apply(hidden [N, H], weight [V, H], targets [N] int64, temperature,
    with_entropy, chunk_rows, vocab_splits, with_mean=False, with_top1=False)``
    -> ``(logp, entropy, mean_logits, is_top1)``, each [N] (fp32; is_top1
    bool), None where not requested. Inputs must be contiguous, on one device,
    validated by the caller. Gradients: hidden and weight, from logp and
    entropy; mean_logits and is_top1 are metrics (non-differentiable)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, with_entropy, chunk_rows=None, vocab_splits=None,
                with_mean=False, with_top1=False):
        ctx.set_materialize_grads(False)
        inv_temp = 1.0 / float(temperature)
        _check_runnable(hidden.device)
        if hidden.shape[0] == 0:
            logp = lse = torch.zeros(0, device=hidden.device, dtype=torch.float32)
            ez = ent = lse.clone() if with_entropy else None
            mean = lse.clone() if with_mean else None
            top1 = torch.zeros(0, device=hidden.device, dtype=torch.bool) if with_top1 else None
        else:
            logp, lse, ez, ent, mean, top1 = _forward(hidden, weight, targets, inv_temp, with_entropy, with_mean,
                                                      with_top1, vocab_splits)
        ctx.save_for_backward(hidden, weight, targets, lse, ez)
        ctx.inv_temp, ctx.chunk_rows = inv_temp, chunk_rows
        ctx.mark_non_differentiable(*(x for x in (mean, top1) if x is not None))
        return logp, ent, mean, top1

    @staticmethod
    def backward(ctx, g_logp, g_ent=None, *_metrics):
        hidden, weight, targets, lse, ez = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        nothing = (None,) * 7
        if (g_logp is None and g_ent is None) or not (need_h or need_w):
            return (None, None) + nothing
        if hidden.shape[0] == 0:
            return (torch.zeros_like(hidden) if need_h else None,
                    torch.zeros_like(weight) if need_w else None) + nothing
        with torch.autocast(hidden.device.type, enabled=False):
            grad_h, grad_w = _backward(hidden, weight, targets, lse, ez, g_logp, g_ent, ctx.inv_temp, need_h,
                                       need_w, ctx.chunk_rows)
        return (grad_h, grad_w) + nothing
