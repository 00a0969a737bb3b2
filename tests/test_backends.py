import random

import pytest

from budgetlib.backends import CachedBackend, FakeBackend, Generation, PrefillUnsupported
from budgetlib.backends.base import Backend


def test_fake_is_pure_whatever_the_batching():
    backend = FakeBackend()
    prompts = [f"question {i}" for i in range(40)]
    together = backend.generate(prompts, max_new_tokens=30)
    shuffled = prompts[:]
    random.Random(1).shuffle(shuffled)
    apart = {p: backend.generate([p], max_new_tokens=30)[0] for p in shuffled}
    assert together == [apart[p] for p in prompts]
    assert backend.generate(prompts, max_new_tokens=30, seed=1) != together
    assert isinstance(backend, Backend)


def test_fake_truncation_and_counts():
    backend = FakeBackend(lambda p, m, t, s, pre: "a b c d e")
    assert backend.generate(["x"], max_new_tokens=5) == [Generation("a b c d e", 5, "stop")]
    assert backend.generate(["x"], max_new_tokens=3) == [Generation("a b c", 3, "length")]


def test_request_validation():
    backend = FakeBackend()
    with pytest.raises(ValueError, match="max_new_tokens"):
        backend.generate(["x"], max_new_tokens=0)
    with pytest.raises(TypeError, match="not one string"):
        backend.generate("x", max_new_tokens=4)
    with pytest.raises(ValueError, match="temperature"):
        backend.generate(["x"], max_new_tokens=4, temperature=-1)
    with pytest.raises(ValueError, match="2 assistant prefixes for 1 prompts"):
        backend.generate(["x"], max_new_tokens=4, assistant_prefix=["a", "b"])


def test_prefix_reaches_responder_or_is_refused():
    echo = FakeBackend(lambda p, m, t, s, pre: f"prefix={pre}")
    assert [g.text for g in echo.generate(["a", "b"], max_new_tokens=5, assistant_prefix=["<b>1", None])] == \
        ["prefix=<b>1", "prefix=None"]
    with pytest.raises(PrefillUnsupported, match="cannot prefill"):
        FakeBackend(supports_prefix=False).generate(["a"], max_new_tokens=5, assistant_prefix="<budget>")


def test_cache_hits_misses_and_dedupe(tmp_path):
    inner = FakeBackend()
    cached = CachedBackend(inner, tmp_path / "gen.sqlite", enabled=True)
    first = cached.generate(["a", "b", "a"], max_new_tokens=20)
    assert inner.calls == [["a", "b"]] and (cached.hits, cached.misses) == (0, 3)
    again = CachedBackend(FakeBackend(), tmp_path / "gen.sqlite", enabled=True)
    assert again.generate(["b", "a", "c"], max_new_tokens=20) == [first[1], first[0],
                                                                  inner.generate(["c"], max_new_tokens=20)[0]]
    assert (again.hits, again.misses) == (2, 1) and again.backend.calls == [["c"]]


def test_cache_key_covers_decoding_params_and_model(tmp_path):
    cached = CachedBackend(FakeBackend(), tmp_path / "g.sqlite", enabled=True)
    base = cached.key("a", max_new_tokens=5, temperature=0.0, seed=0, assistant_prefix=None)
    assert base != cached.key("a", max_new_tokens=6, temperature=0.0, seed=0, assistant_prefix=None)
    assert base != cached.key("a", max_new_tokens=5, temperature=0.0, seed=1, assistant_prefix=None)
    assert base != cached.key("a", max_new_tokens=5, temperature=0.0, seed=0, assistant_prefix="<b>")
    other = CachedBackend(FakeBackend(model_id="other"), tmp_path / "g.sqlite", enabled=True)
    assert base != other.key("a", max_new_tokens=5, temperature=0.0, seed=0, assistant_prefix=None)


def test_cache_switches_off_and_skips_sampling(tmp_path, monkeypatch):
    monkeypatch.setenv("BUDGETLIB_GEN_CACHE", "off")
    inner = FakeBackend()
    off = CachedBackend(inner, tmp_path / "g.sqlite")
    off.generate(["a"], max_new_tokens=5)
    off.generate(["a"], max_new_tokens=5)
    assert inner.calls == [["a"], ["a"]] and not (tmp_path / "g.sqlite").exists()
    on = CachedBackend(inner, tmp_path / "h.sqlite", enabled=True)
    on.generate(["s"], max_new_tokens=5, temperature=0.7)
    on.generate(["s"], max_new_tokens=5, temperature=0.7)
    assert inner.calls[-2:] == [["s"], ["s"]] and on.misses == 0


def test_cache_refuses_short_backend(tmp_path):
    class Short(FakeBackend):
        def generate(self, prompts, **kw):
            return super().generate(prompts, **kw)[:-1]

    with pytest.raises(RuntimeError, match="returned 1 generations for 2 prompts"):
        CachedBackend(Short(), tmp_path / "g.sqlite", enabled=True).generate(["a", "b"], max_new_tokens=5)


def test_generate_flow_in_rounds_and_through_the_cache(tmp_path):
    """A backend without its own flow runs it in rounds (follow-ups wait for the next call, calls of at
    most batch_size); through a `CachedBackend` answers it has are followed without the backend, new
    ones are stored, and a second run of the same flow asks the backend nothing."""
    from budgetlib.backends.base import Request, generate_flow

    backend = FakeBackend(lambda prompt, *_: f"echo {prompt}", model_id="echo")
    order: list = []

    def follow(tag, gen):
        order.append((tag, gen.text))
        return [Request(tag + 1, f"q{tag + 1}")] if tag < 2 else []

    assert generate_flow(backend, [Request(0, "q0"), Request(10, "q10")], follow, max_new_tokens=8,
                         batch_size=1) == 4
    assert backend.calls == [["q0"], ["q10"], ["q1"], ["q2"]]
    assert order == [(0, "echo q0"), (10, "echo q10"), (1, "echo q1"), (2, "echo q2")]
    cached = CachedBackend(backend, tmp_path / "gen.sqlite", enabled=True)
    backend.calls.clear(), order.clear()
    assert generate_flow(cached, [Request(0, "q0")], follow, max_new_tokens=8) == 3
    assert backend.calls == [["q0"], ["q1"], ["q2"]] and cached.misses == 3
    assert order == [(0, "echo q0"), (1, "echo q1"), (2, "echo q2")]
    backend.calls.clear(), order.clear()
    assert generate_flow(cached, [Request(0, "q0")], follow, max_new_tokens=8) == 0
    assert backend.calls == [] and cached.hits == 3
    assert order == [(0, "echo q0"), (1, "echo q1"), (2, "echo q2")]
