"""OpenAIBackend against a real OpenAI-compatible server (llama.cpp serving
the embedded GGUF on 127.0.0.1) and against a small fault-injecting server."""

import json
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from budgetlib.backends import PrefillUnsupported
from budgetlib.backends.openai_api import BackendError, OpenAIBackend
from budgetlib.backends.server_process import free_port


# --- a fault-injecting server ---------------------------------------------

def completion(text="Answer: [[4]]", tokens=5, finish="stop"):
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 3, "completion_tokens": tokens, "total_tokens": tokens + 3}}


@pytest.fixture
def fault_server():
    """Answers each POST with the next scripted behaviour: an int status,
    "ok", "garbage" or ("hang", seconds). Records the requests."""
    script, seen = [], []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(request)
            action = script.pop(0) if script else "ok"
            if isinstance(action, tuple):
                time.sleep(action[1])
                action = "ok"
            if action == "garbage":
                body, status = b"{not json", 200
            elif action == "ok":
                body, status = json.dumps(completion(f"echo: {request['messages'][-1]['content']}")).encode(), 200
            else:
                body, status = json.dumps({"error": {"message": f"status {action}"}}).encode(), action
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", script, seen
    server.shutdown()
    server.server_close()


def backend_for(url, **kw):
    return OpenAIBackend("m", base_url=url, api_key="test", backoff_base=0.01, backoff_max=0.05, **kw)


def test_429_then_success(fault_server):
    url, script, seen = fault_server
    script.extend([429, 503])
    (g,) = backend_for(url).generate(["q"], max_new_tokens=16)
    assert (g.text, g.n_output_tokens, g.finish_reason) == ("echo: q", 5, "stop")
    assert len(seen) == 3 and seen[0]["max_tokens"] == 16
    assert seen[0]["messages"] == [{"role": "user", "content": "q"}]  # the default rendering: no system message
    helpful = OpenAIBackend("m", base_url=url, api_key="k", rendering="chat_helpful", max_retries=0)
    helpful.generate(["q"], max_new_tokens=4)
    assert seen[-1]["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}  # as TALE sends


def test_500s_until_the_limit(fault_server):
    url, script, seen = fault_server
    script.extend([500] * 10)
    with pytest.raises(BackendError, match="gave up after 3 attempts"):
        backend_for(url, max_retries=2).generate(["q"], max_new_tokens=8)
    assert len(seen) == 3  # no stacked retries from the openai client


def test_hung_request_times_out_and_retries(fault_server):
    url, script, seen = fault_server
    script.extend([("hang", 2.0)])
    start = time.perf_counter()
    (g,) = backend_for(url, timeout=0.5).generate(["q"], max_new_tokens=8)
    assert g.n_output_tokens == 5 and time.perf_counter() - start < 2.0 and len(seen) == 2


def test_garbage_and_client_errors_are_clear(fault_server):
    url, script, seen = fault_server
    script.append("garbage")
    with pytest.raises(BackendError, match="request failed"):
        backend_for(url).generate(["q"], max_new_tokens=8)
    script.append(400)
    with pytest.raises(BackendError, match="BadRequestError"):
        backend_for(url).generate(["q"], max_new_tokens=8)
    assert len(seen) == 2  # neither is retried


def test_key_from_environment_only(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="no API key"):
        OpenAIBackend("gpt-4o-mini")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    assert OpenAIBackend("gpt-4o-mini").identity()["base_url"] == "http://127.0.0.1:9/v1"
    with pytest.raises(PrefillUnsupported):
        OpenAIBackend("gpt-4o-mini").generate(["q"], max_new_tokens=4, assistant_prefix="<budget>")


def test_concurrency_keeps_order(fault_server):
    url, script, seen = fault_server
    script.extend([("hang", 0.3), ("hang", 0.2)])  # early requests finish last
    gens = backend_for(url, max_concurrency=4).generate([f"q{i}" for i in range(10)], max_new_tokens=8)
    assert [g.text for g in gens] == [f"echo: q{i}" for i in range(10)]


# --- a real server: llama.cpp with the embedded model ----------------------

@pytest.fixture(scope="module")
def llama_server():
    """llama-cpp-python's server, started through budgetlib's launcher (weight repacking off); a server
    that dies is reported with its signal and its log's last lines, not as a connection error."""
    pytest.importorskip("llama_cpp.server", reason="pip install 'budgetlib[api]' for the llama.cpp server")
    from budgetlib.backends.hf import embedded_gguf_path
    from budgetlib.backends.server_process import ServerProcess

    port = free_port()
    cmd = [sys.executable, "-m", "budgetlib.llama_cpp", "--model", str(embedded_gguf_path()),
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--model_alias", "smollm2"]
    url = f"http://127.0.0.1:{port}/v1"
    server = ServerProcess(cmd, f"{url}/models", name="llama_cpp.server", start_timeout=90)
    yield url
    server.check()  # a crash during the tests fails here with its signal, even if a test swallowed it
    server.stop()


@pytest.mark.integration
def test_real_server_counts_and_finish(llama_server):
    backend = OpenAIBackend("smollm2", base_url=llama_server, api_key="local", max_concurrency=2)
    short, free = backend.generate(["Count from 1 to 50, one number per line.",
                                    "What is 2 + 2? Answer with one number."], max_new_tokens=6)
    assert (short.n_output_tokens, short.finish_reason) == (6, "length")
    assert 0 < free.n_output_tokens <= 6 and free.finish_reason in ("stop", "length")
    assert free.finish_reason == "stop" or free.n_output_tokens == 6


GREEDY_PROMPTS = ["What is 2 + 2? Answer with one number.", "What is 2 + 2? Answer with one number.",
                  "Name a colour.", "What is 2 + 2? Answer with one number, then explain.",
                  "Count from 1 to 50, one number per line.", "Name a colour."]


@pytest.mark.integration
def test_real_server_greedy_answers_do_not_depend_on_earlier_requests(llama_server):
    """The same prompts in another order and at another concurrency give identical texts and counts,
    repeated so a flake would show. The prompts share prefixes and repeat, which is what made
    llama-cpp-python's cross-request KV reuse change answers (budgetlib's launcher turns it off)."""
    n = len(GREEDY_PROMPTS)
    reference = None
    for round_ in range(3):
        for order, concurrency in ((list(range(n)), 1), (list(reversed(range(n))), 4), ([2, 0, 4, 1, 5, 3], 2)):
            backend = OpenAIBackend("smollm2", base_url=llama_server, api_key="local", max_concurrency=concurrency)
            gens = backend.generate([GREEDY_PROMPTS[i] for i in order], max_new_tokens=12)
            by_prompt = [None] * n
            for i, g in zip(order, gens):
                by_prompt[i] = g
            if reference is None:
                reference = by_prompt
            assert by_prompt == reference, f"round {round_}, order {order}, concurrency {concurrency}"
    assert reference[0] == reference[1] and reference[2] == reference[5]  # the same prompt twice in one call


@pytest.mark.integration
def test_real_server_count_matches_the_model_tokenizer(llama_server):
    from transformers import AutoTokenizer

    from budgetlib.backends.hf import embedded_model_dir
    from budgetlib.tokens import count_tokens

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    backend = OpenAIBackend("smollm2", base_url=llama_server, api_key="local")
    (g,) = backend.generate(["Count from 1 to 100, separated by commas."], max_new_tokens=24)
    assert g.n_output_tokens == 24 and g.finish_reason == "length"
    assert abs(count_tokens(tok, g.text) - g.n_output_tokens) <= 1  # re-tokenising may merge one boundary


@pytest.mark.integration
def test_real_server_a_prompt_longer_than_the_context_is_a_clear_error_and_the_server_lives_on(llama_server):
    backend = OpenAIBackend("smollm2", base_url=llama_server, api_key="local", max_retries=0)
    with pytest.raises(BackendError, match=r"BadRequestError.*(context|tokens)"):
        backend.generate(["apple " * 3000 + "How many apples?"], max_new_tokens=8)  # n_ctx is 2048
    (g,) = backend.generate(["What is 2 + 2? Answer with one number."], max_new_tokens=6)
    assert g.n_output_tokens > 0  # the server answers the next request
