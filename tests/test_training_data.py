import dataclasses
import json
import re

import pytest

from budgetlib.backends import FakeBackend
from budgetlib.data import LeakageError, Problem, check_no_overlap, drop_overlap
from budgetlib.search import BudgetSearchResult, TraceStep
from budgetlib.training.data import build_dpo_pairs, build_sft_examples, to_dataset

PROBLEMS = [Problem(f"p{i}", f"What is {i} plus 1?", str(i + 1), "t") for i in range(4)]


def model(prompt, *args):
    """Right answers; under a budget it writes `budget` tokens, else 30; wrong
    at budget 7 (to exercise the regeneration filter)."""
    i = int(re.search(r"What is (\d+)", prompt).group(1))
    m = re.search(r"less than (\d+) tokens", prompt)
    n = int(m.group(1)) if m else 30
    answer = i + 2 if m and int(m.group(1)) == 7 else i + 1
    return " ".join(["w"] * (n - 1)) + f" [[{answer}]]"


RESULTS = [
    BudgetSearchResult("p0", 30, True, 10, 10, "short answer [[1]]", True, [TraceStep(15, 12, True, True)]),
    BudgetSearchResult("p1", 30, False, None, 30, "x", False, [], "vanilla CoT answer is wrong"),
    BudgetSearchResult("p2", 20, True, 20, 20, "vanilla text [[3]]", False, [TraceStep(10, 25, False, False)]),
    BudgetSearchResult("p3", 7, True, 7, 7, "vanilla [[4]]", False, []),
]


def test_sft_examples_sources_and_skips():
    backend = FakeBackend(model)
    examples, report = build_sft_examples(backend, PROBLEMS, RESULTS, max_new_tokens=64)
    assert [(e.id, e.source, e.budget, e.n_tokens) for e in examples] == [("p0", "search", 10, 10),
                                                                          ("p2", "regenerated_at_beta0", 20, 20)]
    assert examples[0].completion == "short answer [[1]]" and "less than" not in examples[0].prompt
    assert examples[0].prompt.endswith("Let's think step by step:\n")
    assert report.skipped == {"no optimal budget (vanilla CoT wrong)": 1, "answer at β0 regenerated wrong": 1}
    assert (report.n_results, report.kept) == (4, 2)
    assert len(backend.calls) == 1 and len(backend.calls[0]) == 2  # one batched pass, for p2 and p3


def test_budget_conditioned_prompt_states_the_budget():
    examples, _ = build_sft_examples(FakeBackend(model), PROBLEMS, RESULTS, max_new_tokens=64, conditioned=True)
    assert examples[0].prompt.endswith("use less than 10 tokens:\n")


def test_dpo_pairs_chosen_budgeted_rejected_vanilla():
    pairs, report = build_dpo_pairs(FakeBackend(model), PROBLEMS, RESULTS, max_new_tokens=64)
    assert [(p.id, p.chosen_tokens, p.rejected_tokens) for p in pairs] == [("p0", 10, 30), ("p2", 20, 30)]
    assert pairs[0].chosen == "short answer [[1]]" and pairs[0].rejected.endswith("[[1]]")
    assert pairs[0].prompt.endswith("Let's think step by step:\n")
    long_chosen = [RESULTS[0].__class__("p0", 30, True, 10, 40, "long " * 39 + "[[1]]", True)]
    with pytest.raises(ValueError, match="no DPO pairs left"):
        build_dpo_pairs(FakeBackend(model), PROBLEMS, long_chosen, max_new_tokens=64)
    kept, _ = build_dpo_pairs(FakeBackend(model), PROBLEMS, long_chosen, max_new_tokens=64, keep_all=True)
    assert len(kept) == 1


def test_empty_and_foreign_results_are_errors():
    with pytest.raises(ValueError, match="no SFT examples left"):
        build_sft_examples(FakeBackend(model), PROBLEMS, [RESULTS[1]], max_new_tokens=64)
    foreign = [BudgetSearchResult("gsm8k:train:0", 30, True, 10, 10, "", True)]
    with pytest.raises(ValueError, match="another dataset or split"):
        build_sft_examples(FakeBackend(model), PROBLEMS, foreign, max_new_tokens=64)


def test_contamination_by_id_and_by_normalised_text():
    train = [Problem("gsm8k:train:0", "Janet’s ducks lay 16 eggs per day.", "1", "gsm8k"),
             Problem("gsm8k:train:1", "Something else entirely?", "2", "gsm8k")]
    zero = [Problem("gsm8k-zero:test:5", "janet's ducks lay 16 eggs per day", "16", "gsm8k-zero")]
    with pytest.raises(LeakageError, match="1 training questions overlap.*same text"):
        check_no_overlap(train, zero)
    kept, dropped = drop_overlap(train, zero)
    assert [p.id for p in kept] == ["gsm8k:train:1"] and dropped == ["gsm8k:train:0"]
    check_no_overlap(kept, zero)
    with pytest.raises(LeakageError, match="same id"):
        check_no_overlap(zero, zero)


def test_contamination_by_problem_statement_gsm8k_zero_style():
    """GSM8K-Zero keeps a GSM8K train problem and changes only the final question."""
    statement = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May."
    train = [Problem("gsm8k:train:0", statement + " How many clips did Natalia sell altogether?", "72", "gsm8k"),
             Problem("gsm8k:train:1", "Ava has 3 cats. Ava gets 2 more. How many cats?", "5", "gsm8k")]
    zero = [Problem("gsm8k-zero:test:0", statement + " How many friends did Natalia sell clips to in April?", "48",
                    "gsm8k-zero"),
            Problem("gsm8k-zero:test:1", "Ava has 3 dogs. Ava gets 2 more. How many cats?", "5", "gsm8k-zero")]
    with pytest.raises(LeakageError, match="1 training questions overlap.*same problem statement"):
        check_no_overlap(train, zero)
    kept, dropped = drop_overlap(train, zero)  # a short statement (under 8 words) is not a shared problem
    assert dropped == ["gsm8k:train:0"] and [p.id for p in kept] == ["gsm8k:train:1"]


def test_data_runs_are_reused_and_start_anew_when_an_input_changes(tmp_path):
    from budgetlib.training.data import dpo_data_run, load_jsonl, sft_data_run

    kw = dict(max_new_tokens=64, dataset="toy", profile="smoke", step="05_tale_pt_sft", root=tmp_path)
    backend = FakeBackend(model)
    examples, run = sft_data_run(backend, PROBLEMS, RESULTS, **kw)
    assert examples == build_sft_examples(FakeBackend(model), PROBLEMS, RESULTS, max_new_tokens=64)[0]
    assert [r["id"] for r in run.items()] == ["p0", "p2"] and run.summary()["kept"] == 2
    assert run.label == "TALE-PT SFT data" and run.metadata["kind"] == "training data"
    assert load_jsonl(run.items_path) == examples  # the file `python -m budgetlib train --data` reads
    calls = len(backend.calls)
    again, run2 = sft_data_run(backend, PROBLEMS, RESULTS, **kw)
    assert again == examples and run2.dir == run.dir and len(backend.calls) == calls  # reused, nothing asked
    other = [dataclasses.replace(RESULTS[0], output_text="another short answer [[1]]"), *RESULTS[1:]]
    dirs = {run.dir, sft_data_run(backend, PROBLEMS, other, **kw)[1].dir,  # other search results
            sft_data_run(backend, PROBLEMS, RESULTS, conditioned=True, **kw)[1].dir,
            sft_data_run(backend, PROBLEMS, RESULTS, **{**kw, "max_new_tokens": 32})[1].dir,
            dpo_data_run(backend, PROBLEMS, RESULTS, keep_all=True, **kw)[1].dir}
    assert len(dirs) == 5


def test_to_dataset():
    examples, _ = build_sft_examples(FakeBackend(model), PROBLEMS, RESULTS, max_new_tokens=64)
    ds = to_dataset(examples)
    assert ds.num_rows == 2 and {"prompt", "completion"} <= set(ds.column_names)


def sampler(prompt, max_new_tokens, temperature, seed, prefix):
    """Greedy: 30 tokens, right except for p1. Samples (seed 1, 2): p0 right in 12 (seed 1) and 8 (seed 2)
    tokens; p1 right only in a 50-token answer (cut at 40); p2 wrong at 5 tokens; p3 right in 30 (a tie)."""
    i = int(re.search(r"What is (\d+)", prompt).group(1))
    if temperature == 0:
        n, right = 30, i != 1
    else:
        n, right = {0: (12 if seed == 1 else 8, True), 1: (50, True), 2: (5, False), 3: (30, True)}[i]
    return " ".join(["w"] * (n - 1)) + f" [[{i + 1 if right else i + 7}]]"


def test_shortest_correct_of_samples_targets():
    from budgetlib.training.data import build_shortest_correct_examples

    backend = FakeBackend(sampler)
    examples, report = build_shortest_correct_examples(backend, PROBLEMS, samples=2, temperature=0.7,
                                                       max_new_tokens=40)
    assert [(e.id, e.n_tokens, e.budget, e.source) for e in examples] == [
        ("p0", 8, 8, "shortest_sampled"), ("p2", 30, 30, "shortest_greedy"), ("p3", 30, 30, "shortest_greedy")]
    assert examples[0].prompt.endswith("Let's think step by step:\n") and examples[0].completion.endswith("[[1]]")
    assert report.skipped == {"no correct answer among the greedy one and 2 samples": 1}  # p1: cut at 40
    assert report.stats == {"from_greedy": 2, "from_samples": 1, "mean_target_tokens": 68 / 3,
                            "mean_greedy_tokens_same_questions": 30.0, "accuracy_per_draw": [0.75, 0.5, 0.5]}
    assert len(backend.calls) == 3  # one pass per draw, every question in it
    with pytest.raises(ValueError, match="temperature > 0"):
        build_shortest_correct_examples(backend, PROBLEMS, samples=2, temperature=0.0, max_new_tokens=40)
    with pytest.raises(ValueError, match="no correct answer among 1 answers to any of 1"):
        build_shortest_correct_examples(backend, PROBLEMS[1:2], samples=0, temperature=0.0, max_new_tokens=40)


def test_sampled_data_runs_keep_draws_and_are_keyed_by_the_sampling(tmp_path):
    from budgetlib.training.data import build_shortest_correct_examples, sampled_sft_data_run

    kw = dict(samples=2, temperature=0.7, max_new_tokens=40, dataset="toy", profile="smoke", step="05",
              root=tmp_path)
    backend = FakeBackend(sampler)
    examples, run = sampled_sft_data_run(backend, PROBLEMS, **kw)
    assert examples == build_shortest_correct_examples(FakeBackend(sampler), PROBLEMS, samples=2, temperature=0.7,
                                                       max_new_tokens=40)[0]
    assert run.summary()["stats"]["from_samples"] == 1 and run.summary()["kept"] == 3
    calls = len(backend.calls)
    assert sampled_sft_data_run(backend, PROBLEMS, **kw)[1].dir == run.dir and len(backend.calls) == calls
    dirs = {run.dir, sampled_sft_data_run(backend, PROBLEMS, **{**kw, "seed": 5})[1].dir,
            sampled_sft_data_run(backend, PROBLEMS, **{**kw, "temperature": 1.0})[1].dir,
            sampled_sft_data_run(backend, PROBLEMS, **{**kw, "samples": 3})[1].dir}
    assert len(dirs) == 4


def test_compressed_targets_replace_only_shorter_right_rewrites(tmp_path):
    from budgetlib.training.data import SFTExample, compress_examples, compressed_sft_data_run

    def rewriter(prompt, max_new_tokens, *args):  # p0 brief and right; p1 wrong; p2 too long; p3 a bare answer
        i = int(re.search(r"What is (\d+)", prompt).group(1))
        return {0: "0 + 1 = 1\n[[1]]", 1: "1 + 1 = 9\n[[9]]", 2: "w " * 12 + "3 = 3\n[[3]]", 3: "[[4]]"}[i]

    examples = [SFTExample(f"p{i}", f"plain {i}", f"long answer {i} [[{i + 1}]]", 10, 10, "shortest_greedy")
                for i in range(4)]
    backend = FakeBackend(rewriter)
    out, report = compress_examples(backend, PROBLEMS, examples)
    assert [(x.id, x.n_tokens, x.budget, x.source) for x in out] == [
        ("p0", 6, 6, "compressed"), ("p1", 10, 10, "shortest_greedy"), ("p2", 10, 10, "shortest_greedy"),
        ("p3", 10, 10, "shortest_greedy")]
    assert out[0].prompt == "plain 0" and out[0].completion == "0 + 1 = 1 [[1]]"  # the fake joins words
    assert report.skipped == {"answer changed": 1, "not shorter": 1, "no calculation kept": 1} and report.kept == 1
    assert report.stats == {"mean_tokens_before": 10.0, "mean_tokens_after": 9.0}
    asked = backend.calls[0]
    assert "Question: What is 0 plus 1?" in asked[0] and "long answer 0 [[1]]" in asked[0]
    with pytest.raises(ValueError, match="not in `problems`"):
        compress_examples(backend, PROBLEMS[:1], examples)
    with pytest.raises(ValueError, match="unknown compression 'zip'"):
        compress_examples(backend, PROBLEMS, examples, how="zip")
    kw = dict(dataset="toy", profile="smoke", step="05", root=tmp_path)
    got, run = compressed_sft_data_run(backend, PROBLEMS, examples, how="model", **kw)
    assert got == out and run.summary()["kept"] == 1
    assert len({run.dir, compressed_sft_data_run(backend, PROBLEMS, examples[:3], how="model", **kw)[1].dir,
                compressed_sft_data_run(backend, PROBLEMS, examples, how="calculations", **kw)[1].dir}) == 3


def test_calculation_lines_keep_the_model_s_own_calculations_and_answer():
    from budgetlib.training.data import SFTExample, calculation_lines, compress_examples

    text = "Betty needs $100.\nShe has 100 / 2 = 50 dollars.\n```python\ntotal = 50 + 15\nprint(total)\n```\n" \
           "So she needs 100 - 65 = 35 more.\nThe answer is [[35]]."
    assert calculation_lines(text) == ("She has 100 / 2 = 50 dollars.\ntotal = 50 + 15\nSo she needs 100 - 65 = 35 more."
                                       "\nThe answer is [[35]].")
    assert calculation_lines("no numbers here\n[[3]]") is None and calculation_lines("1 + 1 = 2") == "1 + 1 = 2"
    examples = [SFTExample("p0", "q", text, 60, 60, "shortest_sampled"),  # wrong for p0 (answer 1): kept as it was
                SFTExample("p2", "q", "It is 2 + 1 = 3, so [[3]]", 40, 40, "shortest_greedy"),
                SFTExample("p3", "q", "x\n3 + 1 = 4\n[[4]]", 5, 5, "shortest_greedy")]  # not shorter
    backend = FakeBackend()
    out, report = compress_examples(backend, PROBLEMS, examples, how="calculations")
    assert [(x.id, x.n_tokens, x.source) for x in out] == [("p0", 60, "shortest_sampled"), ("p2", 9, "compressed"),
                                                           ("p3", 5, "shortest_greedy")]
    assert out[1].completion == "It is 2 + 1 = 3, so [[3]]" and backend.calls == []  # no generation
    assert report.skipped == {"answer changed": 1, "not shorter": 1}
