"""Shared-prefix prefill (issue 9): grouping, the backend switch, ladder mode,
and on the embedded model the same greedy outputs as the plain batched path.

The integration part costs about a minute on a 2-core CPU."""

import re

import pytest

from budgetlib import data, prompts
from budgetlib.backends import CachedBackend, FakeBackend
from budgetlib.backends.prefix_cache import (PrefixGroup, common_prefix_len, group_by_prefix, pack_groups,
                                             prefix_sharing, supports_prefix_sharing)
from budgetlib.data import Problem
from budgetlib.elasticity import budget_sweep, ladder_requests, ladder_sweep
from budgetlib.search import halving_ladder, search_budgets

from test_elasticity import elastic_model
from test_search import PROBLEMS as SCRIPTED_PROBLEMS
from test_search import scripted

SWEEP = [128, 64, 32, 16, 8, 4]  # budgets of different digit counts: suffixes of different lengths


# --- grouping (pure) -------------------------------------------------------------------------------

def seq(head, n_head, tail):
    """A fake token sequence: `n_head` ids from `head`, then `tail`."""
    return [head * 1000 + k for k in range(n_head)] + list(tail)


def test_common_prefix_len():
    assert common_prefix_len([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix_len([1, 2], [1, 2, 3]) == 2 and common_prefix_len([], [1]) == 0


def test_groups_follow_questions_not_the_shared_opening():
    """Three 'questions' share a 20-token opening (like a chat template's
    system prompt); each question's candidates share 60 more tokens. Grouping
    per question saves more, so that is what the grouping picks."""
    opening = list(range(20))
    ids, question_of = [], []
    for q in range(3):
        for budget in (7, 88, 512):
            ids.append(opening + seq(q + 1, 60, [9, budget % 10, budget, 5]))
            question_of.append(q)
    ids.append([42] * 30)  # a single request
    groups, singles = group_by_prefix(ids, min_prefix=16)
    assert singles == [9]
    assert sorted(g.members for g in groups) == [(0, 1, 2), (3, 4, 5), (6, 7, 8)]
    assert {g.prefix_len for g in groups} == {81}  # 20 + 60 + the shared token 9
    # prefix + suffix is the request's own token list, split on its ids
    for g in groups:
        for m in g.members:
            assert ids[m][:g.prefix_len] == ids[g.members[0]][:g.prefix_len] and len(ids[m]) > g.prefix_len


def test_grouping_thresholds_identical_prompts_and_cap():
    short = [[1] * 10 + [k] for k in range(4)]
    assert group_by_prefix(short, min_prefix=16) == ([], [0, 1, 2, 3])  # prefix 10 < 16
    (g,), singles = group_by_prefix(short, min_prefix=8)
    assert g == PrefixGroup((0, 1, 2, 3), 10) and singles == []
    same = [[7] * 20, [7] * 20, [7] * 25]
    (g,), _ = group_by_prefix(same, min_prefix=16)
    assert g.prefix_len == 19  # identical prompts still keep one suffix token each
    many = [[3] * 30 + [k] for k in range(10)]
    groups, singles = group_by_prefix(many, min_prefix=16, max_group=4)
    assert all(len(g.members) <= 4 for g in groups) and sum(len(g.members) for g in groups) + len(singles) == 10
    with pytest.raises(ValueError, match="min_prefix"):
        group_by_prefix(short, min_prefix=0)


def test_pack_groups_fills_batches_and_splits_a_group_at_the_boundary():
    groups = [PrefixGroup(tuple(range(k * 6, k * 6 + 6)), 50) for k in range(3)]
    batches = pack_groups(groups, 8)
    assert [sum(len(g.members) for g in b) for b in batches] == [8, 8, 2]
    assert [g.members for g in batches[0]] == [(0, 1, 2, 3, 4, 5), (6, 7)]
    assert [g.members for g in batches[1]] == [(8, 9, 10, 11), (12, 13, 14, 15)]


# --- the switch, through wrappers --------------------------------------------------------------------

class Sharing(FakeBackend):
    """A FakeBackend that records the shared_prefix setting of each call."""

    supports_shared_prefix = True

    def __init__(self, respond=None):
        super().__init__(respond)
        self.shared_prefix, self.settings = False, []

    def generate(self, prompts_, **kw):
        self.settings.append(self.shared_prefix)
        return super().generate(prompts_, **kw)


def test_prefix_sharing_switches_the_backend_behind_a_cache_and_restores_it(tmp_path):
    inner = Sharing()
    cached = CachedBackend(inner, tmp_path / "g.sqlite", enabled=True)
    with prefix_sharing(cached, True) as on:
        assert on and inner.shared_prefix is True and "shared_prefix" not in vars(cached)
        cached.generate(["a", "b"], max_new_tokens=4)
    assert inner.shared_prefix is False and inner.settings == [True]
    with prefix_sharing(cached, None) as on:
        assert on is False
    with prefix_sharing(FakeBackend(), True) as on:  # no support: ignored
        assert on is False


def test_sweeps_share_by_default_and_send_questions_together():
    problems = [Problem(f"p{i}", f"What is {i} plus 1?", str(i + 1), "t") for i in range(3)]
    backend = Sharing(elastic_model)
    frame = budget_sweep(backend, problems, [4, 16, 32], max_new_tokens=100)
    vanilla_call, budget_call = backend.calls
    assert backend.settings == [False, True]  # only the budgeted call shares
    assert [re.search(r"What is (\d+)", p).group(1) for p in budget_call] == list("000111222")
    assert list(frame.budget) == [4] * 3 + [16] * 3 + [32] * 3  # the frame keeps budget-major rows
    off = Sharing(elastic_model)
    again = budget_sweep(off, problems, [4, 16, 32], max_new_tokens=100, shared_prefix=False)
    assert off.settings == [False, False] and again.equals(frame)


def test_halving_ladder():
    assert halving_ladder(70, 4) == [70, 35, 17, 8, 4]
    assert halving_ladder(1) == [1] and halving_ladder(0) == [] and halving_ladder(3, floor=4) == []


def test_ladder_sweep_rows_and_requests():
    problems = [Problem(f"p{i}", f"What is {i} plus 1?", str(i + 1), "t") for i in range(2)]
    assert [b for _, b in ladder_requests(problems, [60, 9], floor=4)] == [60, 30, 15, 7, 9, 4]
    backend = Sharing(elastic_model)
    frame = ladder_sweep(backend, problems, max_new_tokens=100, floor=4)
    assert len(backend.calls) == 2 and backend.settings == [False, True]
    assert list(frame.budget) == [60, 30, 15, 7] * 2 and list(frame.rung) == [0, 1, 2, 3] * 2
    assert list(frame.output_tokens) == [60, 30, 15, 19] * 2 and set(frame.vanilla_tokens) == {60}


@pytest.mark.parametrize("feasibility", ["elastic", "correct"])
def test_ladder_search_equals_round_by_round(feasibility):
    kw = dict(feasibility=feasibility, max_new_tokens=256, min_budget=2, progress=False)
    rounds = search_budgets(FakeBackend(scripted), SCRIPTED_PROBLEMS, batch_size=64, **kw)
    backend = Sharing(scripted)
    ladder = search_budgets(backend, SCRIPTED_PROBLEMS, ladder=True, group_size=None, **kw)
    assert ladder == rounds
    assert len(backend.calls) == 2 and backend.settings == [False, False]  # vanilla, then every ladder at once
    shared = Sharing(scripted)
    assert search_budgets(shared, SCRIPTED_PROBLEMS, ladder=True, group_size=None, shared_prefix=True, **kw) == rounds
    assert shared.settings == [True, True] and shared.shared_prefix is False  # asked for, then restored
    with pytest.raises(ValueError, match="ladder"):
        search_budgets(FakeBackend(scripted), SCRIPTED_PROBLEMS[:2], strategy="binary", ladder=True)


def test_sliding_window_models_do_not_share():
    import types

    from transformers import LlamaConfig, MistralConfig

    assert supports_prefix_sharing(types.SimpleNamespace(config=LlamaConfig(num_hidden_layers=2)))
    assert not supports_prefix_sharing(types.SimpleNamespace(config=MistralConfig(sliding_window=64,
                                                                                  num_hidden_layers=2)))


# --- the embedded model ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def backend():
    from budgetlib.backends.hf import HFBackend

    return HFBackend(batch_size=16, progress=False)


@pytest.fixture(scope="module")
def sweep_prompts():
    """6 questions x 6 budgets, question by question, as the sweeps send them."""
    return [prompts.BUDGETED_COT.render(p.question, b) for p in data.load("synthetic", "test", limit=6)
            for b in SWEEP]


class ForwardLog:
    """Records the input_ids shape of every forward call of a model."""

    def __init__(self, model):
        self.shapes = []
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        self.shapes.append(tuple(kwargs["input_ids"].shape))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.integration
def test_prefix_is_encoded_once_per_question(backend, sweep_prompts):
    one_question = sweep_prompts[:6]
    ids = [backend.tokenizer(backend.render(p), add_special_tokens=False).input_ids for p in one_question]
    (group,), _ = group_by_prefix(ids)
    suffix = max(len(x) for x in ids) - group.prefix_len
    with ForwardLog(backend.model) as plain:
        backend.generate(one_question, max_new_tokens=2)
    with ForwardLog(backend.model) as shared:
        backend.generate(one_question, max_new_tokens=2, shared_prefix=True)
    assert plain.shapes == [(6, max(len(x) for x in ids)), (6, 1)]
    # one pass over the one prefix, one over the six suffixes, then decoding
    assert shared.shapes == [(1, group.prefix_len), (6, suffix), (6, 1)]
    assert group.prefix_len >= 0.8 * min(len(x) for x in ids)  # only the budget and the turn end differ


@pytest.mark.integration
def test_greedy_outputs_match_the_plain_path(backend, sweep_prompts, record_property):
    backend.prefill_stats.reset()
    plain = backend.generate(sweep_prompts, max_new_tokens=24, shared_prefix=False)
    plain_tokens = backend.prefill_stats.prompt_tokens
    backend.prefill_stats.reset()
    shared = backend.generate(sweep_prompts, max_new_tokens=24, shared_prefix=True)
    stats = backend.prefill_stats
    same = sum(a == b for a, b in zip(plain, shared)) / len(plain)
    record_property("identical_rate", same)
    print(f"shared-prefix vs plain: {same:.1%} identical generations ({len(plain)} prompts); prompt tokens "
          f"{stats.prompt_tokens} vs {plain_tokens} plain")
    # float rounding may flip a greedy near-tie; bound the rate instead of hiding it (measured here: 100%)
    assert same >= 0.95, [(a.text, b.text) for a, b in zip(plain, shared) if a != b]
    assert stats.plain_tokens == 0  # every prompt has partners
    # 36 prompts in batches of 16: each of the 6 questions' prefix once per batch it lands in
    assert stats.shared_batches == 3 and 6 <= stats.prefix_passes <= 6 + 2
    assert stats.prompt_tokens < 0.35 * plain_tokens


@pytest.mark.integration
def test_first_steps_logits_are_close(backend, sweep_prompts):
    """The first decoding steps' logits of the shared layout agree with the
    plain left-padded batch within float tolerance."""
    import torch

    from budgetlib.backends.prefix_cache import prefill_shared

    batch = sweep_prompts[:12]  # two questions: two groups, different prefix lengths
    ids = [backend.tokenizer(backend.render(p), add_special_tokens=False).input_ids for p in batch]
    groups, singles = group_by_prefix(ids)
    assert len(groups) == 2 and not singles
    order = [m for g in groups for m in g.members]
    kw = dict(max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True,
              pad_token_id=backend.tokenizer.pad_token_id)
    padded = backend.tokenizer.pad({"input_ids": [ids[i] for i in order]}, padding=True, return_tensors="pt")
    with torch.inference_mode():
        ref = backend.model.generate(**padded, **kw)
        shared = prefill_shared(backend.model, ids, groups, pad_token_id=backend.tokenizer.pad_token_id,
                                device=backend.device)
        out = backend.model.generate(**shared.generate_kwargs(), **kw)
    ref_new = ref.sequences[:, padded["input_ids"].shape[1]:]
    out_new = out.sequences[:, shared.width:]
    worst = 0.0
    for step in range(4):
        agree = (ref_new[:, :step] == out_new[:, :step]).all(dim=1)  # same history so far
        diff = (ref.logits[step][agree] - out.logits[step][agree]).abs().max().item()
        worst = max(worst, diff)
    print(f"largest first-4-step logit difference: {worst:.2e}")
    assert worst < 2e-3  # fp32; logits are O(10)
    assert torch.equal(ref_new[:, 0], out_new[:, 0])


@pytest.mark.integration
def test_long_mixed_request_keeps_order_prefill_and_singles(backend):
    """A few-shot prompt (~550 tokens) at four budgets, mixed with an
    unrelated short prompt (it shares only the chat template's opening with
    them: plain path) and an assistant prefix; results come back in input
    order and match the plain path."""
    train = data.load("synthetic", "train", limit=16)
    shots = "\n\n".join(f"Question: {p.question}\nAnswer: [[{p.answer}]]" for p in train)
    question = shots + "\n\nQuestion: " + data.load("synthetic", "test", limit=1)[0].question
    batch = [prompts.BUDGETED_COT.render(question, b) for b in (1000, 50)] + ["Name a colour."] \
        + [prompts.BUDGETED_COT.render(question, b) for b in (8, 3)]
    n_tokens = len(backend.tokenizer(backend.render(batch[0])).input_ids)
    assert n_tokens > 500
    backend.prefill_stats.reset()
    shared = backend.generate(batch, max_new_tokens=10, shared_prefix=True, assistant_prefix="Sure.")
    assert backend.prefill_stats.prefix_passes == 1 and backend.prefill_stats.plain_tokens > 0
    plain = backend.generate(batch, max_new_tokens=10, assistant_prefix="Sure.")
    assert shared == plain


@pytest.mark.integration
def test_sweep_through_the_generation_cache_uses_the_shared_path(backend, tmp_path):
    problems = data.load("synthetic", "test", limit=2)
    cached = CachedBackend(backend, tmp_path / "g.sqlite", enabled=True)
    backend.prefill_stats.reset()
    frame = budget_sweep(cached, problems, [64, 16, 4], max_new_tokens=8)
    assert backend.prefill_stats.prefix_passes == 2 and backend.shared_prefix is False  # restored afterwards
    again = budget_sweep(cached, problems, [64, 16, 4], max_new_tokens=8, shared_prefix=False)
    assert again.equals(frame) and cached.hits == 8  # the key does not depend on the switch
