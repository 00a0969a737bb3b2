"""Shared-prefix prefill: encode a prompt prefix once, reuse its KV cache.

Budget search and budget sweeps send the same question many times with only
the budget number near the end changed ("... use less than {budget}
tokens:"). Everything before the first differing token is the same
computation for every candidate. This module

1. groups token-id sequences by a common *token* prefix
   (`group_by_prefix`; the split is on the ids of each full prompt, so
   prefix + suffix is exactly the tokenization of the prompt — never a
   re-tokenization of a string prefix);
2. runs one forward pass over the distinct prefixes of a batch (left padded,
   as the plain path pads whole prompts) and copies each prefix's KV cache to
   its group's rows with one ``index_select`` over the batch dimension
   (`Cache.reorder_cache`);
3. lays the batch out for ``model.generate`` so that generate prefills only
   the per-candidate suffixes and then decodes as usual (`SharedPrefixBatch`).

Row layout (``W = P_max + S_max`` columns)::

    [pad]*(P_max - P_g)  prefix_g  [pad]*(S_max - S_i)  suffix_i
     mask 0              mask 1    mask 0               mask 1

The padding of a short suffix sits *between* the prefix and the suffix, so
the prefix columns of every group line up with the cache computed in step 2,
and all suffixes end in the last column, where generate appends new tokens.
Masked slots are ignored by attention, and generate derives position ids as
``cumsum(mask) - 1``, so the real tokens of a row get positions 0, 1, 2, ...
with no gaps: the same positions, keys and values as in the plain
left-padded batch. Outputs therefore agree with the plain path up to float
rounding (the matrix shapes differ), which can flip a greedy near-tie; the
tests measure that rate. A pad slot's query sees the (unmasked) prefix, so no
attention row is fully masked.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

__all__ = ["MIN_PREFIX", "prefix_sharing", "PrefixGroup", "PrefillStats", "SharedPrefixBatch", "common_prefix_len",
           "group_by_prefix", "pack_groups", "supports_prefix_sharing", "prefill_shared"]

MIN_PREFIX = 16  # a shorter common prefix is not worth a separate forward pass


def _sharing_target(backend):
    """The backend that does the work: `backend` itself when its class declares
    ``supports_shared_prefix``, else the one a wrapper (`CachedBackend`, a
    recorder) holds as its ``backend`` attribute; None when there is none.
    Instance dicts are read directly: wrappers forward unknown attribute reads
    to the wrapped backend, but an assignment would land on the wrapper."""
    seen = set()
    while backend is not None and id(backend) not in seen:
        seen.add(id(backend))
        if getattr(type(backend), "supports_shared_prefix", False):
            return backend
        backend = vars(backend).get("backend") if hasattr(backend, "__dict__") else None
    return None


@contextmanager
def prefix_sharing(backend, enabled: bool | None) -> Iterator[bool]:
    """Within the block the backend shares prompt prefixes if `enabled`
    (False: it does not; None: its own setting stays). Backends that cannot
    share (`FakeBackend`, API backends) are left alone. Yields whether sharing
    is on; the previous setting comes back afterwards.

    Shared-prefix prefill is an option of the backend, not an argument of
    `Backend.generate`, so that it passes through wrappers such as the
    generation cache, whose key it does not belong in."""
    target = _sharing_target(backend)
    if target is None:
        yield False
        return
    before = target.shared_prefix
    if enabled is not None:
        target.shared_prefix = bool(enabled)
    try:
        yield target.shared_prefix
    finally:
        target.shared_prefix = before


@dataclass(frozen=True)
class PrefixGroup:
    """Requests (indices into the caller's list) sharing their first `prefix_len` token ids.
    `prefix_len` is shorter than every member, so each member keeps at least one suffix token."""

    members: tuple[int, ...]
    prefix_len: int


@dataclass
class PrefillStats:
    """Prompt tokens an `HFBackend` ran through the model (padding not counted):
    `plain_tokens` in ordinary batches; `prefix_tokens` in shared-prefix passes
    (`prefix_passes` distinct prefixes, in `shared_batches` batches) and
    `suffix_tokens` after them. Cumulative; `reset()` zeroes it."""

    plain_tokens: int = 0
    prefix_tokens: int = 0
    suffix_tokens: int = 0
    prefix_passes: int = 0
    shared_batches: int = 0

    @property
    def prompt_tokens(self) -> int:
        return self.plain_tokens + self.prefix_tokens + self.suffix_tokens

    def reset(self) -> None:
        self.plain_tokens = self.prefix_tokens = self.suffix_tokens = self.prefix_passes = self.shared_batches = 0


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of leading token ids `a` and `b` share."""
    n = min(len(a), len(b))
    for k in range(n):
        if a[k] != b[k]:
            return k
    return n


def group_by_prefix(ids: Sequence[Sequence[int]], *, min_prefix: int = MIN_PREFIX,
                    max_group: int | None = None) -> tuple[list[PrefixGroup], list[int]]:
    """Partition requests into prefix groups and singles.

    Sequences are sorted lexicographically, so sequences sharing a prefix are
    neighbours and a contiguous run's common prefix is the minimum of its
    neighbour-to-neighbour common prefixes. A dynamic programme over the
    sorted order picks the runs that save the most prompt tokens: a run of n
    requests with common prefix P saves (n - 1) * P. Only runs of 2 to
    `max_group` requests with P >= `min_prefix` become groups, so a few
    questions that share only the chat template's system prompt stay apart
    when each one's own budget candidates share much more. Returns
    (groups, singles); groups in sorted order, members in input order.
    """
    if min_prefix < 1:
        raise ValueError(f"min_prefix must be >= 1, got {min_prefix}")
    n = len(ids)
    cap = max(2, max_group or n)
    order = sorted(range(n), key=lambda i: list(ids[i]))
    # usable common prefix of neighbours: leave every member at least one suffix token
    lcp = [min(common_prefix_len(ids[order[k]], ids[order[k + 1]]), len(ids[order[k]]) - 1,
               len(ids[order[k + 1]]) - 1) for k in range(n - 1)]
    best = [0] * (n + 1)  # best[j]: most tokens saved over the first j sorted requests
    cut: list[tuple[int, int] | None] = [None] * (n + 1)  # (start, prefix) of the run ending at j
    for j in range(1, n + 1):
        best[j], cut[j] = best[j - 1], None  # request j-1 alone
        prefix = None
        for i in range(j - 2, max(-1, j - 1 - cap), -1):  # run order[i:j], at least 2 long
            prefix = lcp[i] if prefix is None else min(prefix, lcp[i])
            if prefix < min_prefix:
                break
            gain = best[i] + (j - i - 1) * prefix
            if gain > best[j]:
                best[j], cut[j] = gain, (i, prefix)
    groups, singles, j = [], [], n
    while j > 0:
        if cut[j] is None:
            singles.append(order[j - 1])
            j -= 1
        else:
            i, prefix = cut[j]
            groups.append(PrefixGroup(tuple(sorted(order[i:j])), prefix))
            j = i
    return groups[::-1], sorted(singles)


def pack_groups(groups: Sequence[PrefixGroup], batch_size: int) -> list[list[PrefixGroup]]:
    """Fill batches of exactly `batch_size` rows (the last may be short) with
    the groups' members in order; a group that crosses a batch boundary is
    split and its prefix is encoded once in each batch it lands in."""
    batches: list[list[PrefixGroup]] = [[]]
    room = batch_size
    for g in groups:
        members = list(g.members)
        while members:
            if room == 0:
                batches.append([])
                room = batch_size
            take, members = members[:room], members[room:]
            batches[-1].append(PrefixGroup(tuple(take), g.prefix_len))
            room -= len(take)
    return [b for b in batches if b]


def _cache_kwarg(model) -> str:
    """The forward/generate keyword for the KV cache: ``cache`` in recent
    transformers, ``past_key_values`` before the rename."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def supports_prefix_sharing(model) -> bool:
    """True when the model's cache is plain full attention (`DynamicLayer` on
    every layer): copying it across the batch and attending over a masked gap
    is exact. Sliding-window and recurrent (linear attention) layers keep a
    truncated or summarised state, so those models use the plain path."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # noqa: BLE001 - an exotic config: do not risk it
        return False
    return all(type(layer) is DynamicLayer for layer in cache.layers)


@dataclass
class SharedPrefixBatch:
    """Inputs for ``model.generate``: the full rows (prefix + suffix, see the
    module docstring), their attention mask and the KV cache already holding
    the prefix columns. Generate computes only the last `suffix_width` columns
    before decoding; new tokens start at column `width`."""

    input_ids: Any
    attention_mask: Any
    cache: Any
    cache_kwarg: str
    prefix_width: int
    suffix_width: int

    @property
    def width(self) -> int:
        return self.prefix_width + self.suffix_width

    def generate_kwargs(self) -> dict[str, Any]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, self.cache_kwarg: self.cache}


def prefill_shared(model, ids: Sequence[Sequence[int]], groups: Sequence[PrefixGroup], *, pad_token_id: int,
                   device, stats: PrefillStats | None = None) -> SharedPrefixBatch:
    """Encode each group's prefix once (one forward pass over the batch of
    distinct prefixes, left padded) and copy the KV cache to the members.

    `ids` holds every request's full token ids; `groups` are the groups of
    this batch (members index into `ids`). Rows come out group by group, in
    member order. The suffixes are *not* run here: ``model.generate`` runs
    them (one forward over all suffixes) as its prefill, then decodes.
    """
    import torch
    from transformers import DynamicCache

    if not groups:
        raise ValueError("prefill_shared needs at least one group")
    for g in groups:
        head = ids[g.members[0]][:g.prefix_len]
        if any(len(ids[m]) <= g.prefix_len or list(ids[m][:g.prefix_len]) != list(head) for m in g.members):
            raise ValueError(f"group {g.members} does not share a {g.prefix_len}-token prefix with a non-empty suffix")
    p_width = max(g.prefix_len for g in groups)
    rows = [(gi, m) for gi, g in enumerate(groups) for m in g.members]
    s_width = max(len(ids[m]) - groups[gi].prefix_len for gi, m in rows)

    prefix_ids = torch.full((len(groups), p_width), pad_token_id, dtype=torch.long)
    prefix_mask = torch.zeros((len(groups), p_width), dtype=torch.long)
    for gi, g in enumerate(groups):
        prefix_ids[gi, p_width - g.prefix_len:] = torch.tensor(ids[g.members[0]][:g.prefix_len])
        prefix_mask[gi, p_width - g.prefix_len:] = 1
    positions = (prefix_mask.cumsum(-1) - 1).masked_fill(prefix_mask == 0, 0)  # as generate derives them
    key = _cache_kwarg(model)
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=prefix_ids.to(device), attention_mask=prefix_mask.to(device),
              position_ids=positions.to(device), use_cache=True, logits_to_keep=1, **{key: cache})
        # one copy of each prefix per member row: index_select over the batch dimension of every layer
        cache.reorder_cache(torch.tensor([gi for gi, _ in rows], dtype=torch.long, device=device))

    full_ids = torch.full((len(rows), p_width + s_width), pad_token_id, dtype=torch.long)
    full_mask = torch.zeros_like(full_ids)
    for r, (gi, m) in enumerate(rows):
        g, seq = groups[gi], ids[m]
        suffix = seq[g.prefix_len:]
        full_ids[r, :p_width] = prefix_ids[gi]
        full_mask[r, :p_width] = prefix_mask[gi]
        full_ids[r, p_width + s_width - len(suffix):] = torch.tensor(suffix)
        full_mask[r, p_width + s_width - len(suffix):] = 1
    if stats is not None:
        stats.shared_batches += 1
        stats.prefix_passes += len(groups)
        stats.prefix_tokens += sum(g.prefix_len for g in groups)
        stats.suffix_tokens += sum(len(ids[m]) - groups[gi].prefix_len for gi, m in rows)
    return SharedPrefixBatch(full_ids.to(device), full_mask.to(device), cache, key, p_width, s_width)
