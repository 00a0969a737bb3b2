"""LlamaServerBackend and ServerProcess: against a scripted stand-in for
llama-server (tests/fake_llama_server.py) for the protocol and crash reports,
and against the real binary when one is installed (make install-medium)."""

import json
import os
import signal
import stat
import sys
from pathlib import Path

import pytest

from budgetlib.backends.base import Backend, Generation
from budgetlib.backends.llama_server import LlamaServerBackend, LlamaServerError, find_llama_server
from budgetlib.backends.server_process import ServerCrashed, ServerProcess, ServerTimeout, free_port

FAKE = Path(__file__).with_name("fake_llama_server.py")


@pytest.fixture
def fake_binary(tmp_path):
    exe = tmp_path / "llama-server"
    exe.write_text(f"#!{sys.executable}\nimport runpy, sys\nsys.argv[0] = {str(FAKE)!r}\n"
                   f"runpy.run_path({str(FAKE)!r}, run_name='__main__')\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    return exe, gguf


@pytest.fixture
def backend(fake_binary, tmp_path, monkeypatch):
    exe, gguf = fake_binary
    monkeypatch.setenv("FAKE_LLAMA_ARGV_FILE", str(tmp_path / "argv.json"))
    b = LlamaServerBackend(gguf, parallel=3, ctx_per_slot=512, threads=2, binary=str(exe), start_timeout=30)
    yield b
    b.close()


def test_is_a_backend_with_its_command_line(backend, tmp_path):
    assert isinstance(backend, Backend)
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv[argv.index("-np") + 1] == "3" and argv[argv.index("-c") + 1] == "1536"  # 3 slots x 512
    assert argv[argv.index("-t") + 1] == "2"
    assert "--no-repack" in argv  # weight repacking (extra buffer types) off by default
    assert argv[argv.index("--cache-ram") + 1] == "0" and "--no-kv-unified" in argv  # reproducible greedy answers
    assert backend.n_ctx_slot == 512
    assert backend.identity() == {"model": "tiny", "revision": None, "backend": "llama.cpp-server",
                                  "dtype": "gguf", "device": "cpu", "rendering": "chat_default"}


def test_counts_exclude_the_end_of_generation_token(backend):
    stop, cut = backend.generate(["two words", "one two three four five six"], max_new_tokens=4)
    assert stop == Generation("echo: two words", 3, "stop")  # 3 tokens + <|im_end|> (not counted)
    assert cut == Generation("echo: one two three", 4, "length")


def test_keeps_order_and_runs_requests_concurrently(backend):
    prompts = [f"q{i}" for i in range(12)]
    gens = backend.generate(prompts, max_new_tokens=8)
    assert [g.text for g in gens] == [f"echo: {p}" for p in prompts]
    assert backend._request("GET", "/props")["max_active"] == 3  # never more than the slots, and all of them


def test_a_flow_keeps_every_slot_busy_and_follows_each_answer(backend):
    """generate_flow on the server: follow-ups are sent as their answers arrive (no rounds), at most the
    slots are in flight, each answer is the one generate gives, and a failed request raises after the
    requests in flight are followed, with nothing new sent after it."""
    from budgetlib.backends.base import Request, generate_flow

    seen = {}

    def follow(tag, gen):
        seen[tag] = gen
        return [Request(tag + 100, f"next {tag}")] if tag < 100 else []

    assert generate_flow(backend, [Request(i, f"q{i}") for i in range(5)], follow, max_new_tokens=8) == 0
    assert set(seen) == set(range(5)) | set(range(100, 105))
    assert seen[3] == Generation("echo: q3", 2, "stop") and seen[103] == Generation("echo: next 3", 3, "stop")
    assert backend._request("GET", "/props")["max_active"] == 3
    seen.clear()
    with pytest.raises(LlamaServerError, match="exceed"):
        generate_flow(backend, [Request(0, "q0"), Request(1, "TOO_LONG"), Request(2, "q2")],
                      lambda tag, gen: (seen.__setitem__(tag, gen), [])[1], max_new_tokens=8)
    assert set(seen) == {0, 2}  # sent before the failure came back, and followed


def test_render_and_prefill(backend):
    assert backend.render("hi") == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert backend.render("hi", "<budget>") == backend.render("hi") + "<budget>"
    (g,) = backend.generate(["hi"], max_new_tokens=8, assistant_prefix="<budget>")
    assert g.text == "(after <budget>) echo: hi"  # the prefix went into the prompt, not into the answer
    assert backend.generate([], max_new_tokens=4) == []


@pytest.mark.parametrize("rendering, text", [
    ("tale_raw", "You are a helpful assistant.\nUser: hi\nAssistant:"),
    ("chat_helpful", "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                     "<|im_start|>assistant\n"),
    ("chat_empty", "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"),
])
def test_each_rendering_is_what_the_model_reads_and_part_of_the_identity(fake_binary, rendering, text):
    exe, gguf = fake_binary
    with LlamaServerBackend(gguf, parallel=1, ctx_per_slot=512, binary=str(exe), start_timeout=30,
                            rendering=rendering) as b:
        assert b.render("hi") == text and b.identity()["rendering"] == rendering
        (g,) = b.generate(["hi"], max_new_tokens=8, assistant_prefix=" <budget>")
        assert g.text.endswith("echo: hi") and "<budget>" in g.text  # prompt and prefix reached the model
    with pytest.raises(ValueError, match="unknown rendering 'chat'.*tale_raw, chat_helpful"):
        LlamaServerBackend(gguf, binary=str(exe), rendering="chat")


def test_a_prompt_longer_than_the_context_is_a_clear_error_and_the_server_lives_on(backend):
    with pytest.raises(LlamaServerError, match=r"exceed the slot's context \(512 tokens\): start the backend with "
                                               r"a larger ctx_per_slot"):
        backend.generate(["TOO_LONG " * 3], max_new_tokens=8)
    assert backend.generate(["hi"], max_new_tokens=8)[0].text == "echo: hi"


def test_a_crash_mid_run_is_reported_as_a_crash(backend):
    with pytest.raises(ServerCrashed, match=r"killed by signal SIGSEGV \(11\)"):
        backend.generate(["fine", "SEGFAULT please"], max_new_tokens=4)


def test_a_crash_at_start_reports_signal_and_log_tail(fake_binary, monkeypatch):
    exe, gguf = fake_binary
    monkeypatch.setenv("FAKE_LLAMA_CRASH_AT_START", "1")
    with pytest.raises(ServerCrashed) as err:
        LlamaServerBackend(gguf, binary=str(exe), start_timeout=30)
    assert "killed by signal SIGSEGV (11)" in str(err.value)
    assert "repacking weights ... general protection fault" in str(err.value)  # the log's last lines


def _dead(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.startswith("State:") and "Z" in line.split()[1] for line in f)  # a zombie is dead
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_server_dies_with_a_killed_parent(fake_binary, tmp_path):
    """A kernel killed with SIGKILL runs no atexit: the server must not outlive it (it would spin on the cores)."""
    import subprocess
    import time

    exe, gguf = fake_binary
    engines = tmp_path / "engines"
    engines.mkdir()
    script = (f"import pathlib, time\nimport budgetlib.backends.cores as cores\n"
              f"cores._engines_dir = lambda: pathlib.Path({str(engines)!r})\n"
              f"from budgetlib.backends.llama_server import LlamaServerBackend\n"
              f"b = LlamaServerBackend({str(gguf)!r}, parallel=1, threads=1, binary={str(exe)!r}, start_timeout=30)\n"
              f"print(b.server.proc.pid, flush=True)\ntime.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(parent.stdout.readline())
        assert not _dead(server_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while not _dead(server_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _dead(server_pid), f"llama-server {server_pid} outlived the process that started it"
    finally:
        parent.kill()
        if not _dead(server_pid):
            os.kill(server_pid, signal.SIGKILL)


def test_a_server_that_never_answers_times_out_with_its_log(tmp_path):
    port = free_port()
    cmd = [sys.executable, "-c", "import time; print('loading', flush=True); time.sleep(30)"]
    with pytest.raises(ServerTimeout, match=r"did not answer .* within 1 s(.|\n)*loading"):
        ServerProcess(cmd, f"http://127.0.0.1:{port}/health", start_timeout=1)


def test_bad_arguments(fake_binary, tmp_path, monkeypatch):
    exe, gguf = fake_binary
    with pytest.raises(LlamaServerError, match="neither an embedded model"):
        LlamaServerBackend(tmp_path / "missing.gguf", binary=str(exe))
    with pytest.raises(ValueError, match="parallel >= 1"):
        LlamaServerBackend(gguf, parallel=0, binary=str(exe))
    monkeypatch.setenv("LLAMA_SERVER", str(tmp_path / "nope"))
    with pytest.raises(LlamaServerError, match="LLAMA_SERVER=.* is not an executable"):
        find_llama_server()


# --- the real llama-server (make install-medium) ---------------------------

def _real_binary():
    try:
        return find_llama_server()
    except LlamaServerError as exc:
        pytest.skip(f"no llama-server binary ({exc})")


@pytest.mark.integration
def test_real_server_greedy_counts_match_the_tokenizer():
    from transformers import AutoTokenizer

    from budgetlib.backends.hf import embedded_model_dir
    from budgetlib.tokens import count_tokens

    binary = _real_binary()
    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    with LlamaServerBackend("smollm2-135m", parallel=2, ctx_per_slot=1024, binary=binary) as b:
        short, free = b.generate(["Count from 1 to 50, one number per line.",
                                  "What is 2 + 2? Answer with one number."], max_new_tokens=24)
        assert (short.n_output_tokens, short.finish_reason) == (24, "length")
        assert abs(count_tokens(tok, short.text) - 24) <= 1
        assert free.finish_reason == "stop" and 0 < free.n_output_tokens < 24
        assert count_tokens(tok, free.text) == free.n_output_tokens  # no end-of-sequence token counted
        assert b.generate(["What is 2 + 2? Answer with one number."], max_new_tokens=24)[0] == free


@pytest.mark.integration
def test_real_server_greedy_answers_do_not_depend_on_order_or_concurrency():
    """The same prompts (sharing prefixes, one repeated) in three orders, one or three at a time, three
    rounds: identical texts and counts. Without cache_prompt off, the host prompt cache off and one KV
    buffer per slot, a prompt's answer could depend on what the slot or the batch held before."""
    binary = _real_binary()
    prompts = ["What is 2 + 2? Answer with one number.", "What is 2 + 2? Answer with one number, then explain.",
               "Name a colour.", "Count from 1 to 50, one number per line.", "What is 2 + 2? Answer with one number."]
    n, reference = len(prompts), None
    with LlamaServerBackend("smollm2-135m", parallel=3, ctx_per_slot=512, binary=binary) as b:
        for round_ in range(3):
            for order, slots in ((list(range(n)), 1), (list(reversed(range(n))), 3), ([2, 0, 4, 1, 3], 3)):
                b.parallel = slots  # requests in flight at once (the server keeps its 3 slots)
                gens = b.generate([prompts[i] for i in order], max_new_tokens=16)
                by_prompt = dict(zip(order, gens))
                got = [by_prompt[i] for i in range(n)]
                reference = reference or got
                assert got == reference, f"round {round_}, order {order}, {slots} at once"
    assert reference[0] == reference[4]


def test_open_backend_picks_the_engine(fake_binary, tmp_path, monkeypatch):
    from budgetlib.backends import open_backend

    exe, gguf = fake_binary
    monkeypatch.setenv("FAKE_LLAMA_ARGV_FILE", str(tmp_path / "argv.json"))
    with open_backend(gguf, engine="llama-server", batch_size=3, progress=False, binary=str(exe)) as b:
        assert isinstance(b, LlamaServerBackend) and b.parallel == 3
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv[argv.index("-np") + 1] == "3"
    with pytest.raises(ValueError, match="unknown engine 'sglang'; known: hf, llama-server, vllm, auto"):
        open_backend(gguf, engine="sglang")


def test_open_backend_reads_a_profile_s_settings(fake_binary, tmp_path, monkeypatch):
    """What every notebook does: open_backend(SETTINGS) with a profile's mapping picks its engine and slots."""
    from budgetlib.backends import open_backend
    from budgetlib.profiles import profile
    from budgetlib.prompts import STOP_AT_ANSWER

    exe, gguf = fake_binary
    monkeypatch.setenv("FAKE_LLAMA_ARGV_FILE", str(tmp_path / "argv.json"))
    settings = profile("medium", "01", model=str(gguf))
    assert (settings["engine"], settings["batch_size"]) == ("llama-server", 8)
    with open_backend(settings, progress=False, binary=str(exe)) as b:
        assert isinstance(b, LlamaServerBackend) and b.parallel == 8
        # the medium profile renders as TALE's code does and stops at the first closed [[...]] (our reading)
        assert (b.rendering, b.stop_at_answer) == ("tale_raw", True)
        assert b.identity()["rendering"] == "tale_raw" and b.identity()["stop_at_answer"] == STOP_AT_ANSWER
    with open_backend(settings, rendering="chat_helpful", binary=str(exe)) as b:  # arguments win over the profile's
        assert (b.rendering, b.stop_at_answer) == ("chat_helpful", True)
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv[argv.index("-np") + 1] == "8" and argv[argv.index("-m") + 1] == str(gguf)
    with pytest.raises(ValueError, match="cannot load a peft LoRA adapter"):
        open_backend(settings, adapter=str(tmp_path), binary=str(exe))


def test_one_llama_cpp_engine_at_a_time(fake_binary, tmp_path, monkeypatch):
    """A second backend in this process closes the first (a notebook cell run twice); another process's live
    engine is refused with its pid unless exclusive=False; a record left by dead processes is dropped."""
    import subprocess
    import warnings

    from budgetlib.backends import cores

    exe, gguf = fake_binary
    monkeypatch.setenv("FAKE_LLAMA_ARGV_FILE", str(tmp_path / "argv.json"))
    kw = dict(parallel=1, ctx_per_slot=512, threads=1, binary=str(exe), start_timeout=30)
    first = LlamaServerBackend(gguf, **kw)
    with pytest.warns(UserWarning, match=r"closing this process's earlier llama.cpp engine \(llama-server tiny"):
        second = LlamaServerBackend(gguf, **kw)
    assert first.server.proc.poll() is not None and second.server.proc.poll() is None
    second.close()

    other = subprocess.Popen(["sleep", "60"])  # stands for another process's llama-server
    try:
        (cores._engines_dir() / f"{other.pid}.engine").write_text(f"{other.pid} {other.pid} llama-server big\n")
        (cores._engines_dir() / "999999.engine").write_text("999998 999999 llama-server gone\n")  # dead: stale
        from budgetlib.backends.server_process import ServerProcess

        stopped, real_stop = [], ServerProcess.stop
        monkeypatch.setattr(ServerProcess, "stop", lambda self: (stopped.append(self.proc), real_stop(self)))
        with pytest.raises(cores.EngineBusy, match=rf"llama-server big \(server pid {other.pid}, started by pid "
                                                   rf"{other.pid}\).*exclusive=False"):
            LlamaServerBackend(gguf, **kw)
        assert not (cores._engines_dir() / "999999.engine").exists()
        assert len(stopped) == 1 and stopped[0].poll() is not None  # the refused backend's server is not left running
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # beside another process's engine only when asked, and silently
            with LlamaServerBackend(gguf, exclusive=False, **kw) as b:
                assert b.generate(["hi"], max_new_tokens=2)
    finally:
        other.kill()
        other.wait()


def test_threads_above_the_free_cores_are_warned_about(monkeypatch):
    import warnings

    from budgetlib.backends.cores import busy_cores, check_threads

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    with pytest.warns(UserWarning, match=r"2 threads but only 1 of 2 cores are free now \(1.0 busy\).*threads=1"):
        assert check_threads(2, busy=1.0) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_threads(2, busy=0.1) == 2
    assert 0.0 <= busy_cores(0.05) <= 2.0


def test_a_repeat_penalty_is_sent_and_part_of_the_identity(fake_binary, tmp_path, monkeypatch):
    """TALE decodes its raw wrapper with repetition penalty 1.2: opt-in, sent with every request, and in the
    backend's identity (so cached answers with and without it never mix); off, identities are as before."""
    exe, gguf = fake_binary
    kw = dict(parallel=1, ctx_per_slot=512, threads=1, binary=str(exe), start_timeout=30, rendering="tale_raw")
    with LlamaServerBackend(gguf, **kw) as plain:
        assert "repeat_penalty" not in plain.identity()
        (g,) = plain.generate(["2+2?"], max_new_tokens=8)
        assert g.text.startswith("echo:")
    with LlamaServerBackend(gguf, repeat_penalty=1.2, **kw) as tale:
        assert tale.identity()["repeat_penalty"] == 1.2
        (g,) = tale.generate(["2+2?"], max_new_tokens=8)
        assert g.text.startswith("(penalty 1.2) echo:")
    with pytest.raises(ValueError, match="repeat_penalty must be > 0"):
        LlamaServerBackend(gguf, repeat_penalty=0, **kw)


def test_stop_at_answer_ends_at_the_first_numeric_answer_past_placeholders(fake_binary):
    """`stop_at_answer=True` (the medium profile's, our reading for TALE's raw wrapper): the answer ends at its
    first closed [[...]] holding a digit; "[[answer]]" (the format line's placeholder) does not end it, the
    answer goes on from there (a second request, its tokens added); the text keeps "]]" so the judge reads it;
    finish is "stop"; in the identity when on, absent (keys as before) when off."""
    from budgetlib.answers import extract_answer
    from budgetlib.prompts import STOP_AT_ANSWER

    exe, gguf = fake_binary
    kw = dict(parallel=1, ctx_per_slot=512, threads=1, binary=str(exe), start_timeout=30, rendering="tale_raw")
    question = "so [[answer]] then [[1450]] [[end]] [[end]]"
    with LlamaServerBackend(gguf, **kw) as plain:
        assert "stop_at_answer" not in plain.identity()
        (g,) = plain.generate([question], max_new_tokens=32)
        assert g.text == "echo: " + question and g.n_output_tokens == 7
    with LlamaServerBackend(gguf, stop_at_answer=True, **kw) as cut:
        assert cut.identity()["stop_at_answer"] == STOP_AT_ANSWER
        (g, never) = cut.generate([question, "no answer here"], max_new_tokens=32)
        assert g.text == "echo: so [[answer]] then [[1450]]" and g.finish_reason == "stop"
        assert g.n_output_tokens == 5 and extract_answer(g.text) == "1450"
        assert never.text == "echo: no answer here" and never.n_output_tokens == 4
        (looping,) = cut.generate(["[[answer]] [[answer]] [[answer]] [[answer]] [[7]]"], max_new_tokens=32)
        assert looping.text == "echo: [[answer]] [[answer]] [[answer]]"  # a third placeholder ends it
        assert (looping.n_output_tokens, looping.finish_reason) == (4, "stop")
        (capped,) = cut.generate([question], max_new_tokens=4)  # the cap falls after the placeholder
        assert capped.text == "echo: so [[answer]] then" and capped.finish_reason == "length"
        assert capped.n_output_tokens == 4


def test_the_cache_keeps_every_answer_finished_before_a_request_failed(fake_binary, tmp_path):
    """CachedBackend stores llama-server's answers one by one (generate_each): a failed request (or a kill)
    loses only itself; the rerun reuses the others with no model call."""
    from budgetlib.backends import CachedBackend

    exe, gguf = fake_binary
    with LlamaServerBackend(gguf, parallel=2, ctx_per_slot=512, threads=1, binary=str(exe), start_timeout=30) as b:
        cached = CachedBackend(b, tmp_path / "gen.sqlite", enabled=True)  # the notebook's cache
        run = CachedBackend(cached, tmp_path / "run.sqlite", enabled=True)  # a run's own, stacked on it
        with pytest.raises(LlamaServerError, match="exceed the slot's context"):
            run.generate(["one", "TOO_LONG two", "three", "one"], max_new_tokens=8)
        for path in ("gen.sqlite", "run.sqlite"):  # both caches kept both finished answers
            again = CachedBackend(b, tmp_path / path, enabled=True)
            texts = [g.text for g in again.generate(["one", "three"], max_new_tokens=8)]
            assert texts == ["echo: one", "echo: three"] and (again.hits, again.misses) == (2, 0)
        assert [g.text for g in b.generate(["three", "one"], max_new_tokens=8)] == ["echo: three", "echo: one"]
