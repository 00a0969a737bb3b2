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
  request waits for a round to end. The buffer has a row per slot: a
  finished row's slot is taken by the last running row (one row copied), a
  joining row is written into a free slot, and the whole cache is copied
  only when the buffer must grow or is mostly padding. A prefix that every
  request shares (the chat template's opening) can be run once.

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
    reads a `DynamicLayer`'s tensors reads the same values. The buffer may hold
    more rows than the batch: the first `active` rows are the batch (the rest
    are free slots for `greedy_continuous`)."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length, self.active = capacity, 0, 0
        self._k = self._v = None

    def lazy_initialization(self, key_states, value_states) -> None:
        self.device = key_states.device
        b, h, _, d = key_states.shape
        self._k = key_states.new_zeros((b, h, self.capacity, d))
        self._v = value_states.new_zeros((b, h, self.capacity, d))
        self.active = b
        self.is_initialized = True

    def _views(self) -> None:
        self.keys = self._k[:self.active, :, :self.length]
        self.values = self._v[:self.active, :, :self.length]

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"KV cache full: {end} positions asked of a buffer of {self.capacity}")
        self._k[:self.active, :, self.length:end].copy_(key_states)
        self._v[:self.active, :, self.length:end].copy_(value_states)
        self.length = end
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices) -> None:
        if self.is_initialized:
            self._k, self._v = self._k[indices], self._v[indices]
            self.active = self._k.shape[0]
            self._views()

    def move_row(self, src: int, dst: int) -> None:
        """Row `dst` takes row `src`'s filled columns (a finished row's slot reused by a running one)."""
        self._k[dst, :, :self.length] = self._k[src, :, :self.length]
        self._v[dst, :, :self.length] = self._v[src, :, :self.length]

    def set_active(self, rows: int) -> None:
        self.active = rows
        self._views()

    def write_rows(self, at: int, keys, values) -> None:
        """Rows ``at, at + 1, ...`` (free slots) take `keys`/`values` right-aligned to the filled length,
        zeros to their left (masked padding); they join the batch."""
        rows, width = keys.shape[0], keys.shape[-2]
        pad = self.length - width
        if pad < 0 or at + rows > self._k.shape[0]:
            raise ValueError(f"{rows} rows of {width} positions do not fit at row {at} of a "
                             f"{self._k.shape[0]}-row buffer filled to {self.length}")
        self._k[at:at + rows, :, :pad] = 0
        self._v[at:at + rows, :, :pad] = 0
        self._k[at:at + rows, :, pad:self.length] = keys
        self._v[at:at + rows, :, pad:self.length] = values
        self.set_active(max(self.active, at + rows))

    def relayout(self, parts, offsets, width: int, capacity: int, rows: int = 0) -> None:
        """A fresh buffer of `capacity` positions (and at least `rows` rows) holding `parts` (``(keys,
        values)`` blocks, stacked on the batch axis) each right-aligned to column `width`, starting at its
        column offset in `offsets` (zeros to its left: masked padding). One copy of each block."""
        first = parts[0][0]
        filled = sum(k.shape[0] for k, _ in parts)
        shape = (max(rows, filled), first.shape[1], capacity, first.shape[-1])
        self._k, self._v = first.new_zeros(shape), first.new_zeros(shape)
        at = 0
        for (k, v), offset in zip(parts, offsets):
            self._k[at:at + k.shape[0], :, offset:width] = k
            self._v[at:at + k.shape[0], :, offset:width] = v
            at += k.shape[0]
        self.capacity, self.length, self.active, self.device = capacity, width, filled, first.device
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


class _Prefix:
    """Leading token ids shared by requests, and their cache (keys, values per layer; one row)."""

    def __init__(self, model, ids: Sequence[int]):
        import torch
        from transformers import DynamicCache

        self.ids = list(ids)
        cache = DynamicCache(config=model.config)
        model(input_ids=torch.tensor([self.ids]), position_ids=torch.arange(len(self.ids))[None], cache=cache,
              use_cache=True, logits_to_keep=1)
        self.kv = [(layer.keys, layer.values) for layer in cache.layers]

    def starts(self, ids: Sequence[int]) -> bool:
        """Whether `ids` start with the prefix and go on past it."""
        return len(ids) > len(self.ids) and list(ids[:len(self.ids)]) == self.ids


class _Batch:
    """The running rows of `greedy_continuous`: a cache buffer of `slots` rows whose first ``len(rows)``
    rows are running, their attention mask, next positions and last tokens.

    Every row's last token sits in the last filled column. A finished row's slot is taken by the last
    running row (one row of the cache copied); joining rows are written into free slots, right-aligned
    (one copy of their own prefill). The whole buffer is copied (`_relayout`) only when a joining prompt
    is wider than the filled part, when the buffer has no room for a joining row's `max_new_tokens`, or
    when a quarter of the filled columns (and at least 32) are padding for every running row."""

    def __init__(self, model, max_new_tokens: int, slots: int, stats: dict):
        self.model, self.max_new_tokens, self.slots, self.stats = model, max_new_tokens, slots, stats
        self.rows: list[Row] = []
        self.cache = self.mask = self.next_pos = self.last = None

    def prefill(self, rows: list[Row], pad_id: int, prefix=None):
        """Run the prompts of `rows` (left padded) and return (cache layers' keys/values, mask, next positions,
        first tokens). With `prefix` (a `_Prefix` that every row starts with) only the rows' suffixes are
        run, over copies of the prefix's cache: row layout ``prefix, padding, suffix``."""
        import torch
        from transformers import DynamicCache

        cut = 0 if prefix is None else len(prefix.ids)
        tails = [r.ids[cut:] for r in rows]
        width = max(map(len, tails))
        ids = torch.tensor([[pad_id] * (width - len(t)) + t for t in tails])
        mask = torch.tensor([[1] * cut + [0] * (width - len(t)) + [1] * len(t) for t in tails])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, cut:]
        cache = DynamicCache(config=self.model.config)
        if prefix is not None:
            for i, (k, v) in enumerate(prefix.kv):
                cache.update(k.expand(len(rows), -1, -1, -1), v.expand(len(rows), -1, -1, -1), i)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                         use_cache=True, logits_to_keep=1)
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        return kv, mask, positions[:, -1:] + 1, out.logits[:, -1, :].argmax(-1)

    def _padding(self) -> int:
        """Leading columns that every running row masks."""
        used = self.mask.any(0).nonzero()
        return int(used[0]) if len(used) else self.mask.shape[1]

    def _too_padded(self) -> bool:
        return self._padding() >= max(32, self.mask.shape[1] // 4)

    def join(self, rows: list[Row], new) -> None:
        """Add `rows`, prefilled as `new` (from `prefill`), to the batch."""
        import torch

        kv, mask, next_pos, last = new
        n, width = len(self.rows), mask.shape[1]
        if n and width <= self.mask.shape[1] and self.mask.shape[1] + self.max_new_tokens <= \
                self.cache.layers[0].capacity and not self._too_padded():
            for layer, (k, v) in zip(self.cache.layers, kv):
                layer.write_rows(n, k, v)
            mask = torch.nn.functional.pad(mask, (self.mask.shape[1] - width, 0))
            self.mask, self.next_pos = torch.cat([self.mask, mask]), torch.cat([self.next_pos, next_pos])
            self.last = torch.cat([self.last, last])
        else:
            self._relayout(new)
        self.rows += rows

    def drop(self, ended: list[int]) -> None:
        """Remove the rows at indices `ended`: the last running rows move into their slots."""
        for i in sorted(ended, reverse=True):
            tail = len(self.rows) - 1
            if i != tail:
                for layer in self.cache.layers:
                    layer.move_row(tail, i)
                self.mask[i], self.next_pos[i], self.last[i] = self.mask[tail], self.next_pos[tail], self.last[tail]
                self.rows[i] = self.rows[tail]
                self.stats["moves"] += 1
            self.rows.pop()
        n = len(self.rows)
        if not n:
            self.cache = self.mask = self.next_pos = self.last = None
            return
        self.mask, self.next_pos, self.last = self.mask[:n], self.next_pos[:n], self.last[:n]
        for layer in self.cache.layers:
            layer.set_active(n)
        if self._too_padded():
            self._relayout(None)

    def _relayout(self, new) -> None:
        """Copy the running rows (their columns that some row attends to) and the prefilled rows `new` into a
        fresh buffer of `slots` rows, the shorter side left padded, with room for ``2 * max_new_tokens`` more
        columns (rows that join later need up to `max_new_tokens` each)."""
        import torch

        self.stats["relayouts"] += 1
        n = len(self.rows)
        if self.cache is None:  # the first rows (the buffer is sized below)
            self.cache = preallocated_cache(self.model.config, 1)
        start = self._padding() if n else 0
        old_len = self.mask.shape[1] - start if n else 0
        new_len = 0 if new is None else new[1].shape[1]
        width = max(old_len, new_len)
        masks, positions, lasts, offsets = [], [], [], []
        if n:
            masks.append(torch.nn.functional.pad(self.mask[:, start:], (width - old_len, 0)))
            positions.append(self.next_pos)
            lasts.append(self.last)
            offsets.append(width - old_len)
        if new is not None:
            masks.append(torch.nn.functional.pad(new[1], (width - new_len, 0)))
            positions.append(new[2])
            lasts.append(new[3])
            offsets.append(width - new_len)
        for i, layer in enumerate(self.cache.layers):
            parts = ([(layer.keys[:, :, start:], layer.values[:, :, start:])] if n else []) + \
                    ([new[0][i]] if new is not None else [])
            layer.relayout(parts, offsets, width, width + 2 * self.max_new_tokens, rows=self.slots)
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
                      prefix: Sequence[int] = (), stats: dict | None = None, prefill_stats=None) -> None:
    """Continuous batching: decode the rows of `requests` greedily with at most
    `slots` rows in the batch. When a row ends (an end token, or
    `max_new_tokens` tokens) `finished(row)` is called with it (``row.tokens``
    ends with the end token if there was one) and returns new rows to queue.
    Waiting rows join the batch between decode steps, prefilled together,
    whenever an eighth of the slots is free (or the batch is empty, or every
    waiting row fits), so prefill runs in a few large passes. Rows are queued
    first in, first out. With `prefix` (token ids, e.g. the chat template's
    opening) the prefix is run once and the rows that start with it prefill
    only the rest, over a copy of its cache (the same positions; outputs agree
    up to float rounding). `stats` counts ``row_steps``, ``steps``,
    ``prefills``, ``prefix_rows`` (rows prefilled after the shared prefix),
    ``relayouts`` (copies of the whole cache) and ``moves`` (a finished row's
    slot taken by a running row). `prefill_stats` (a `prefix_cache.PrefillStats`,
    if given) counts the prompt tokens run: the prefix once, the suffixes after
    it, the prompts prefilled whole."""
    import torch

    if slots < 1:
        raise ValueError(f"slots must be >= 1, got {slots}")
    stats = {} if stats is None else stats
    for key in ("row_steps", "steps", "prefills", "prefix_rows", "relayouts", "moves"):
        stats.setdefault(key, 0)
    queue: deque[Row] = deque(requests)
    batch = _Batch(model, max_new_tokens, slots, stats)
    with torch.inference_mode():
        shared = _Prefix(model, prefix) if len(prefix) else None
        if shared is not None and prefill_stats is not None:
            prefill_stats.prefix_tokens += len(shared.ids)
            prefill_stats.prefix_passes += 1
        while queue or batch.rows:
            free = slots - len(batch.rows)
            if queue and free and (free >= max(1, slots // 8) or not batch.rows or len(queue) <= free):
                joining = [queue.popleft() for _ in range(min(free, len(queue)))]
                uses = [shared is not None and shared.starts(r.ids) for r in joining]
                after = [r for r, u in zip(joining, uses) if u]
                whole = [r for r, u in zip(joining, uses) if not u]
                for rows, with_prefix in ((after, shared), (whole, None)):
                    if rows:
                        new = batch.prefill(rows, pad_id, with_prefix)
                        batch.join(rows, new)
                        for row, t in zip(rows, new[3].tolist()):  # their first tokens, from the prefill
                            row.tokens.append(t)
                        stats["prefills"] += 1
                stats["prefix_rows"] += len(after)
                if prefill_stats is not None:
                    prefill_stats.suffix_tokens += sum(len(r.ids) - len(shared.ids) for r in after)
                    prefill_stats.plain_tokens += sum(len(r.ids) for r in whole)
            # every row's last token is not fed yet: rows that end leave before the next step
            ended = [i for i, row in enumerate(batch.rows)
                     if row.tokens[-1] in eos_ids or len(row.tokens) >= max_new_tokens]
            if ended:
                done = [batch.rows[i] for i in ended]
                batch.drop(ended)
                for row in done:
                    queue.extend(finished(row))
                continue  # refill before the next step
            batch.last = batch.step()
            stats["steps"] += 1
            stats["row_steps"] += len(batch.rows)
            for row, t in zip(batch.rows, batch.last.tolist()):
                row.tokens.append(t)
