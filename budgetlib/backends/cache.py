"""An on-disk generation cache in front of any backend.

Keyed by the backend's identity (model, revision, dtype, device), the exact
rendered model input and the decoding parameters, so notebooks reuse the
same greedy answers from one to the next. Only greedy requests
(temperature 0) are cached: a sampled answer is a draw, not a value to
reuse. `BUDGETLIB_GEN_CACHE=off` (or ``enabled=False``) turns it off, e.g.
for timing runs. Storage is one SQLite file (atomic writes, safe across
processes).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..paths import cache_dir
from .base import Backend, Generation, Request, check_request, generate_flow, in_order, prefixes_for

__all__ = ["CachedBackend", "default_cache_path", "cache_enabled_by_env"]


def default_cache_path() -> Path:
    return cache_dir() / "generations.sqlite"


def cache_enabled_by_env() -> bool:
    return os.environ.get("BUDGETLIB_GEN_CACHE", "on").strip().lower() not in ("off", "0", "false", "no")


class CachedBackend:
    """Wraps `backend`; misses go to it in one batched call, hits come from disk. A backend with
    ``generate_each`` (llama-server) has each answer stored as soon as it is finished.
    `hits` and `misses` count requests since creation. `sampled` stores sampled
    answers too (keyed by temperature and seed): not a value to reuse across
    runs, but a run's own record of the draws it made (`runs.Run.keep_answers`)."""

    def __init__(self, backend: Backend, path: str | Path | None = None, *, enabled: bool | None = None,
                 sampled: bool = False):
        self.backend = backend
        self.sampled = sampled
        self.path = Path(path) if path is not None else default_cache_path()
        self.enabled = cache_enabled_by_env() if enabled is None else enabled
        self.hits = 0
        self.misses = 0
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as db:
                db.execute("CREATE TABLE IF NOT EXISTS generations (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    @property
    def model_id(self) -> str:
        return self.backend.model_id

    def identity(self) -> dict[str, Any]:
        return self.backend.identity()

    def render(self, prompt: str, assistant_prefix: str | None = None) -> str:
        return self.backend.render(prompt, assistant_prefix)

    def __getattr__(self, name: str):  # tokenizer, device, ... of the wrapped backend
        if name == "backend":
            raise AttributeError(name)
        return getattr(self.backend, name)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=60)
        try:
            with db:  # commits, or rolls back on error
                yield db
        finally:
            db.close()

    def key(self, prompt: str, *, max_new_tokens: int, temperature: float, seed: int,
            assistant_prefix: str | None) -> str:
        payload = {
            "backend": self.backend.identity(),
            "input": self.backend.render(prompt, assistant_prefix),
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "seed": seed,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                 seed: int = 0, assistant_prefix: str | Sequence[str] | None = None) -> list[Generation]:
        return in_order(self.generate_each(prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                                           seed=seed, assistant_prefix=assistant_prefix), len(prompts))

    def generate_each(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                      seed: int = 0, assistant_prefix: str | Sequence[str] | None = None
                      ) -> Iterator[tuple[int, Generation]]:
        """``(index, generation)`` pairs: the hits first, then the misses as the backend finishes them, each
        stored the moment it exists when the backend has ``generate_each`` (so caches stacked on one another,
        a run's over the notebook's, each keep every finished answer)."""
        check_request(prompts, max_new_tokens, temperature)
        if not self.enabled or (temperature > 0 and not self.sampled):
            fresh = self.backend.generate(prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                                          seed=seed, assistant_prefix=assistant_prefix)
            yield from enumerate(fresh)
            return
        prefixes = prefixes_for(assistant_prefix, len(prompts))
        keys = [self.key(p, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                         assistant_prefix=pre) for p, pre in zip(prompts, prefixes)]
        found = self._lookup(set(keys))
        missing = [i for i, k in enumerate(keys) if k not in found]
        self.hits += len(prompts) - len(missing)
        self.misses += len(missing)
        for i, k in enumerate(keys):
            if k in found:
                yield i, found[k]
        todo, queued = [], set()  # the same request twice in one call is generated once
        for i in missing:
            if keys[i] not in queued:
                queued.add(keys[i])
                todo.append(i)
        if not todo:
            return
        twins = {k: [i for i in missing if keys[i] == k] for k in queued}
        request = dict(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                       assistant_prefix=[prefixes[i] for i in todo])
        each = getattr(self.backend, "generate_each", None)
        if each is not None:  # stored one by one as they finish: a kill loses only unfinished answers
            pairs = ((todo[j], g) for j, g in each([prompts[i] for i in todo], **request))
        else:
            fresh = self.backend.generate([prompts[i] for i in todo], **request)
            if len(fresh) != len(todo):
                raise RuntimeError(f"backend {self.model_id!r} returned {len(fresh)} generations "
                                   f"for {len(todo)} prompts")
            self._store({keys[i]: g for i, g in zip(todo, fresh)})
            pairs = zip(todo, fresh)
        for i, g in pairs:
            if each is not None:
                self._store({keys[i]: g})
            for twin in twins[keys[i]]:
                yield twin, g

    def generate_flow(self, requests: Sequence[Request], follow, *, max_new_tokens: int,
                      batch_size: int | None = None) -> int:
        """`backends.base.generate_flow` through the cache: a request it has an answer for is followed at
        once (its follow-ups looked up in turn), the others go to the wrapped backend's flow, each answer
        stored as it arrives. Returns the wrapped flow's count of calls."""
        if not self.enabled:
            return generate_flow(self.backend, requests, follow, max_new_tokens=max_new_tokens, batch_size=batch_size)

        def misses(reqs: Sequence[Request]) -> list[Request]:
            """Follow the requests the cache answers (level by level, one lookup each); return the rest."""
            out, work = [], list(reqs)
            while work:
                keys = [self.key(r.prompt, max_new_tokens=max_new_tokens, temperature=0.0, seed=0,
                                 assistant_prefix=r.assistant_prefix) for r in work]
                found, following = self._lookup(set(keys)), []
                for r, key in zip(work, keys):
                    if key in found:
                        self.hits += 1
                        following.extend(follow(r.tag, found[key]))
                    else:
                        self.misses += 1
                        out.append(Request((r.tag, key), r.prompt, r.assistant_prefix))
                work = following
            return out

        def store_and_follow(tag, gen: Generation) -> list[Request]:
            user_tag, key = tag
            self._store({key: gen})
            return misses(follow(user_tag, gen))

        first = misses(requests)
        if not first:
            return 0
        return generate_flow(self.backend, first, store_and_follow, max_new_tokens=max_new_tokens,
                             batch_size=batch_size)

    def _lookup(self, keys: set[str]) -> dict[str, Generation]:
        found: dict[str, Generation] = {}
        ordered = sorted(keys)
        with self._connect() as db:
            for start in range(0, len(ordered), 500):
                chunk = ordered[start:start + 500]
                rows = db.execute(f"SELECT key, value FROM generations WHERE key IN ({','.join('?' * len(chunk))})",
                                  chunk).fetchall()
                for key, value in rows:
                    found[key] = Generation(**json.loads(value))
        return found

    def _store(self, new: dict[str, Generation]) -> None:
        rows = [(k, json.dumps({"text": g.text, "n_output_tokens": g.n_output_tokens,
                                "finish_reason": g.finish_reason})) for k, g in new.items()]
        with self._connect() as db:
            db.executemany("INSERT OR REPLACE INTO generations (key, value) VALUES (?, ?)", rows)
