"""Greedy decoding loops for `HFBackend` over a preallocated KV cache.

transformers' `DynamicCache` appends each step's keys and values with
``torch.cat``, which copies the whole cache every step: at 32 rows of a few
hundred tokens that copy is about a third of a decode step on a CPU
(profiled on the 135M model). `PreallocatedLayer` writes each step into a
buffer sized once and hands attention a view, so a step copies one column.

Two loops use it:

- `greedy_compacting`: one left-padded batch; each row leaves the batch (and
  the cache) as soon as it ends, so the last long answers do not drag the
  finished rows through every step.
- `greedy_continuous` (continuous batching): requests wait in a queue; a
  row that ends frees its slot, a callback may add requests that depend on
  the finished answer (the next budget of a search), and waiting requests
  are prefilled and merged into the running batch between decode steps. No
  request waits for a round to end.

Both are greedy, and both compute each row exactly as a left-padded batch
does: the same positions (``cumsum(mask) - 1``), masked padding, keys and
values rotated by absolute position. Outputs agree with batch-1 decoding up
to float rounding of the different matrix shapes, as any batching does.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

__all__ = ["PreallocatedLayer", "preallocated_cache", "greedy_compacting", "greedy_continuous", "Row"]


def _layer_base():
    from transformers.cache_utils import DynamicLayer

    return DynamicLayer


class PreallocatedLayer(_layer_base()):
    """A full-attention cache layer whose keys/values live in one buffer of
    `capacity` positions: `update` writes the new columns in place and returns
    views of the filled part. ``keys``/``values`` are those views, so code that
    reads a `DynamicLayer`'s tensors reads the same values."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0
        self._k = self._v = None

    def lazy_initialization(self, key_states, value_states) -> None:
        self.device = key_states.device
        b, h, _, d = key_states.shape
        self._k = key_states.new_zeros((b, h, self.capacity, d))
        self._v = value_states.new_zeros((b, h, self.capacity, d))
        self.is_initialized = True

    def _views(self) -> None:
        self.keys, self.values = self._k[:, :, :self.length], self._v[:, :, :self.length]

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache full: {end} positions asked of a buffer of {self.capacity}")
        self._k[:, :, self.length:end].copy_(key_states)
        self._v[:, :, self.length:end].copy_(value_states)
        self.length = end
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices) -> None:
        if self.is_initialized:
            self._k, self._v = self._k[indices], self._v[indices]
            self._views()

    def relayout(self, parts, offsets, width: int, capacity: int) -> None:
        """A fresh buffer of `capacity` positions holding `parts` (``(keys, values)`` blocks, stacked on
        the batch axis) each right-aligned to column `width`, starting at its column offset in `offsets`
        (zeros to its left: masked padding). One copy of each block."""
        first = parts[0][0]
        rows = sum(k.shape[0] for k, _ in parts)
        self._k = first.new_zeros((rows, first.shape[1], capacity, first.shape[-1]))
        self._v = first.new_zeros((rows, first.shape[1], capacity, first.shape[-1]))
        at = 0
        for (k, v), offset in zip(parts, offsets):
            self._k[at:at + k.shape[0], :, offset:width] = k
            self._v[at:at + k.shape[0], :, offset:width] = v
            at += k.shape[0]
        self.capacity, self.length, self.device = capacity, width, first.device
        self.is_initialized = True
        self._views()


def preallocated_cache(config, capacity: int):
    """A `DynamicCache` for `config` whose layers are `PreallocatedLayer`s of
    `capacity` positions. Raises ValueError for a model with sliding-window or
    recurrent layers (their state is not a plain growing buffer)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=config)
    if not all(type(layer) is DynamicLayer for layer in cache.layers):
        raise ValueError("preallocated_cache needs full-attention layers only (no sliding window, no recurrence)")
    cache.layers = [PreallocatedLayer(capacity) for _ in cache.layers]
    return cache


def greedy_compacting(model, input_ids, attention_mask, max_new_tokens: int, eos_ids,
                      stats: dict | None = None) -> list[list[int]]:
    """Greedy decoding of one left-padded batch that drops each row from the
    batch (and its KV cache) as soon as it ends. Returns each row's new tokens,
    up to and including its end token. `stats` (if given) counts
    ``row_steps`` (rows decoded, summed over steps)."""
    import torch

    cache = preallocated_cache(model.config, input_ids.shape[1] + max_new_tokens)
    mask = attention_mask
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache,
                use_cache=True, logits_to_keep=1)
    next_pos = positions[:, -1:] + 1
    alive = list(range(input_ids.shape[0]))
    rows: list[list[int]] = [[] for _ in alive]
    eos = torch.tensor(sorted(eos_ids), device=input_ids.device)
    for step in range(max_new_tokens):
        tokens = out.logits[:, -1, :].argmax(-1)
        for row, t in zip(alive, tokens.tolist()):
            rows[row].append(t)
        if step == max_new_tokens - 1:
            break
        keep = ~torch.isin(tokens, eos)
        if not bool(keep.all()):
            if not bool(keep.any()):
                break
            idx = keep.nonzero().squeeze(-1)
            cache.batch_select_indices(idx)
            mask, next_pos, tokens = mask[idx], next_pos[idx], tokens[idx]
            alive = [alive[i] for i in idx.tolist()]
        if stats is not None:
            stats["row_steps"] = stats.get("row_steps", 0) + len(alive)
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
        out = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=next_pos,
                    cache=cache, use_cache=True)
        next_pos = next_pos + 1
    return rows


@dataclass
class Row:
    """One request in `greedy_continuous`: its tag, its prompt's token ids and the tokens generated so far."""

    tag: Any
    ids: list[int]
    tokens: list[int] = field(default_factory=list)


class _Batch:
    """The running rows of `greedy_continuous`: their cache, attention mask, next positions and last tokens."""

    def __init__(self, model, max_new_tokens: int):
        self.model, self.max_new_tokens = model, max_new_tokens
        self.rows: list[Row] = []
        self.cache = self.mask = self.next_pos = self.last = None

    def prefill(self, rows: list[Row], pad_id: int):
        """Run the prompts of `rows` (left padded) and return (cache layers' keys/values, mask, next positions,
        first tokens)."""
        import torch
        from transformers import DynamicCache

        width = max(len(r.ids) for r in rows)
        ids = torch.tensor([[pad_id] * (width - len(r.ids)) + r.ids for r in rows])
        mask = torch.tensor([[0] * (width - len(r.ids)) + [1] * len(r.ids) for r in rows])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                         use_cache=True, logits_to_keep=1)
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        return kv, mask, positions[:, -1:] + 1, out.logits[:, -1, :].argmax(-1)

    def rebuild(self, keep: list[int], new=None) -> None:
        """Keep the running rows at indices `keep` and append the prefilled rows `new` (from `prefill`):
        columns that every kept row masks are dropped, and the shorter side is left padded so that every
        row's last token sits in the last column. Dropping rows alone (no `new`, little to trim) selects
        them in place of a relayout."""
        import torch

        idx = torch.tensor(keep, dtype=torch.long)
        if self.cache is None:  # the first rows (the buffer is sized by the relayout below)
            self.cache = preallocated_cache(self.model.config, 1)
            mask, start = new[1][:0], 0
        else:
            mask = self.mask[idx]
            start = int(mask.any(0).nonzero()[0]) if len(keep) else mask.shape[1]
        if new is None and start < max(32, mask.shape[1] // 4):
            self.cache.batch_select_indices(idx)
            self.mask, self.next_pos, self.last = mask, self.next_pos[idx], self.last[idx]
            return
        mask = mask[:, start:]
        old_len, new_len = mask.shape[1], 0 if new is None else new[1].shape[1]
        width = max(old_len, new_len)
        masks, positions, lasts, offsets = [], [], [], []
        if len(keep):
            masks.append(torch.nn.functional.pad(mask, (width - old_len, 0)))
            positions.append(self.next_pos[idx])
            lasts.append(self.last[idx])
            offsets.append(width - old_len)
        if new is not None:
            masks.append(torch.nn.functional.pad(new[1], (width - new_len, 0)))
            positions.append(new[2])
            lasts.append(new[3])
            offsets.append(width - new_len)
        for i, layer in enumerate(self.cache.layers):
            parts = ([(layer.keys[idx, :, start:], layer.values[idx, :, start:])] if len(keep) else []) + \
                    ([new[0][i]] if new is not None else [])
            layer.relayout(parts, offsets, width, width + self.max_new_tokens)
        self.mask, self.next_pos, self.last = torch.cat(masks), torch.cat(positions), torch.cat(lasts)

    def step(self):
        """Feed every row's last token; return the next tokens."""
        import torch

        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=-1)
        out = self.model(input_ids=self.last[:, None], attention_mask=self.mask, position_ids=self.next_pos,
                         cache=self.cache, use_cache=True)
        self.next_pos = self.next_pos + 1
        return out.logits[:, -1, :].argmax(-1)


def greedy_continuous(model, requests: Sequence[Row], finished: Callable[[Row], Sequence[Row]], *,
                      max_new_tokens: int, eos_ids, pad_id: int, slots: int,
                      stats: dict | None = None) -> None:
    """Continuous batching: decode the rows of `requests` greedily with at most
    `slots` rows in the batch. When a row ends (an end token, or
    `max_new_tokens` tokens) `finished(row)` is called with it (``row.tokens``
    ends with the end token if there was one) and returns new rows to queue.
    Waiting rows join the batch between decode steps, prefilled together,
    whenever at least a quarter of the slots is free (or the batch is empty,
    or every waiting row fits), so prefill runs in a few large passes. Rows
    are queued first in, first out. `stats` counts ``row_steps``, ``steps``,
    ``prefills`` and ``rebuilds``."""
    import torch

    if slots < 1:
        raise ValueError(f"slots must be >= 1, got {slots}")
    stats = {} if stats is None else stats
    for key in ("row_steps", "steps", "prefills", "rebuilds"):
        stats.setdefault(key, 0)
    queue: deque[Row] = deque(requests)
    batch = _Batch(model, max_new_tokens)
    with torch.inference_mode():
        while queue or batch.rows:
            free = slots - len(batch.rows)
            if queue and free and (free >= max(1, slots // 4) or not batch.rows or len(queue) <= free):
                joining = [queue.popleft() for _ in range(min(free, len(queue)))]
                new = batch.prefill(joining, pad_id)
                batch.rebuild(list(range(len(batch.rows))), new)
                batch.rows += joining
                for row, t in zip(joining, new[3].tolist()):  # their first tokens, from the prefill
                    row.tokens.append(t)
                stats["prefills"] += 1
            # every row's last token is not fed yet: rows that end leave before the next step
            ended = {i for i, row in enumerate(batch.rows)
                     if row.tokens[-1] in eos_ids or len(row.tokens) >= max_new_tokens}
            if ended:
                done = [row for i, row in enumerate(batch.rows) if i in ended]
                keep = [i for i in range(len(batch.rows)) if i not in ended]
                if keep:
                    batch.rebuild(keep)
                    batch.rows = [batch.rows[i] for i in keep]
                else:
                    batch = _Batch(model, max_new_tokens)
                stats["rebuilds"] += 1
                for row in done:
                    queue.extend(finished(row))
                continue  # refill before the next step
            batch.last = batch.step()
            stats["steps"] += 1
            stats["row_steps"] += len(batch.rows)
            for row, t in zip(batch.rows, batch.last.tolist()):
                row.tokens.append(t)
