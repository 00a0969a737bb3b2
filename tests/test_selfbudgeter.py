import math
import json
import re

import pytest

from budgetlib.backends import FakeBackend
from budgetlib.data import Problem
from budgetlib.runs import RunError
from budgetlib.training.selfbudgeter import (build_cold_start, evaluate_selfbudgeter, grpo_prompts, preset_prefix,
                                             preset_sweep)

PROBLEMS = [Problem(f"p{i}", f"What is {i} plus 1?", str(i + 1), "t") for i in range(4)]


def model(prompt, max_new_tokens, temperature, seed, prefix):
    """Vanilla CoT: right on even i, 10 words. SelfBudgeter prompt: states
    budget 6 and writes 6 words, or follows a preset budget exactly."""
    i = int(re.search(r"What is (\d+)", prompt).group(1))
    if "<budget>N</budget>" in prompt:
        if prefix:
            n = int(re.search(r"<budget>(\d+)", prefix).group(1))
            return " ".join(["w"] * (n - 1)) + f" [[{i + 1}]]</solution>"
        return "<budget>6</budget><solution>" + " ".join(["w"] * 5) + f" [[{i + 1}]]</solution>"
    return " ".join(["w"] * 9) + f" [[{i + 1 if i % 2 == 0 else i}]]"


def test_cold_start_labels_budget_with_own_length():
    examples, report = build_cold_start(FakeBackend(model), PROBLEMS, max_new_tokens=64)
    assert [e.id for e in examples] == ["p0", "p2"] and report.skipped == {"wrong": 2}
    assert examples[0].completion == "<budget>10</budget><solution>w w w w w w w w w [[1]]</solution>"
    assert "<budget>N</budget>" in examples[0].prompt and examples[0].budget == 10
    prompts = grpo_prompts(PROBLEMS, examples)  # never answered correctly: b_max = infinity (no budget penalty)
    assert [p.upper_budget for p in prompts] == [10, math.inf, 10, math.inf] and prompts[1].answer == "2"
    with pytest.raises(ValueError, match="temperature"):
        build_cold_start(FakeBackend(model), PROBLEMS, max_new_tokens=64, samples=2)


def test_evaluation_and_presets():
    rows, summary = evaluate_selfbudgeter(FakeBackend(model), PROBLEMS, max_new_tokens=64)
    assert summary["well_formed_rate"] == 1.0 and summary["accuracy"] == 1.0
    assert summary["mean_stated_budget"] == 6 and summary["within_budget_rate"] == 1.0
    assert rows[0]["n_output_tokens"] == 6 and summary["mean_relative_deviation"] == 0.0
    sweep = preset_sweep(FakeBackend(model), PROBLEMS, [5, 20], max_new_tokens=64)
    assert list(sweep.preset) == [5, 20] and list(sweep.mean_output_tokens) == [5, 20]
    assert list(sweep.within_budget_rate) == [1.0, 1.0] and list(sweep.accuracy) == [1.0, 1.0]
    with pytest.raises(ValueError, match="positive integer"):
        preset_prefix(0)


def test_malformed_outputs_are_reported():
    rows, summary = evaluate_selfbudgeter(FakeBackend(lambda *a: "just [[1]]"), PROBLEMS[:1], max_new_tokens=8)
    assert summary["well_formed_rate"] == 0.0 and rows[0]["problem"] == "no <budget>N</budget>"
    assert rows[0]["correct"] and summary["within_budget_rate"] is None


class WordTokenizer:
    """Tokens are whitespace words, and each tag is one more token."""

    def encode(self, text, add_special_tokens=False):
        return re.sub(r"(</?\w+>)", r" \1 ", text).split()


def test_cold_start_budget_counts_the_whole_formatted_answer():
    from budgetlib.training.selfbudgeter import labelled_answer

    text, budget = labelled_answer("a b c [[4]]", 4, WordTokenizer())
    assert len(WordTokenizer().encode(text)) == budget == 4 + 5  # 4 tags and the number itself
    assert text == "<budget>9</budget><solution>a b c [[4]]</solution>"
    assert labelled_answer("a b c [[4]]", 4) == ("<budget>4</budget><solution>a b c [[4]]</solution>", 4)


def test_cold_start_uses_the_backend_tokenizer():
    backend = FakeBackend(model)
    backend.tokenizer = WordTokenizer()
    examples, _ = build_cold_start(backend, PROBLEMS, max_new_tokens=64)
    assert examples[0].budget == 15 and examples[0].completion.startswith("<budget>15</budget>")


def test_runs_are_written_reused_and_resumed(tmp_path):
    from budgetlib.runs import read_jsonl
    from budgetlib.training.selfbudgeter import selfbudgeter_run

    calls = []

    def counting(prompt, *args):
        calls.append(prompt)
        return model(prompt, *args)

    backend = FakeBackend(counting)
    opts = dict(max_new_tokens=64, dataset="toy", profile="smoke", root=tmp_path, label="SelfBudgeter cold start")
    rows, summary = selfbudgeter_run(backend, PROBLEMS, **opts)
    run_dirs = list((tmp_path / "07_selfbudgeter").iterdir())
    assert len(run_dirs) == 1 and len(calls) == 4
    assert [r["id"] for r in read_jsonl(run_dirs[0] / "items.jsonl")] == ["p0", "p1", "p2", "p3"]
    assert rows[0]["method"] == "selfbudgeter" and summary["accuracy"] == 1.0
    assert selfbudgeter_run(backend, PROBLEMS, **opts) == (rows, summary) and len(calls) == 4  # reused
    # a run killed after two rows resumes with the other two only
    (run_dirs[0] / "summary.json").unlink()
    lines = (run_dirs[0] / "items.jsonl").read_text().splitlines()
    (run_dirs[0] / "items.jsonl").write_text("\n".join(lines[:2]) + "\n")
    assert selfbudgeter_run(backend, PROBLEMS, **opts)[1] == summary and len(calls) == 6
    sweep = preset_sweep(backend, PROBLEMS, [8], **opts)
    assert sweep.loc[0, "mean_output_tokens"] == 8 and len(list((tmp_path / "07_selfbudgeter").iterdir())) == 2
    labels = sorted(json.loads((d / "metadata.json").read_text())["label"] for d in (tmp_path / "07_selfbudgeter").iterdir())
    assert labels == ["SelfBudgeter cold start (own budget)", "SelfBudgeter cold start, preset 8"]


def test_adherence_and_training_figures(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from budgetlib.plots import adherence_figure, training_figure

    sweep = pd.DataFrame({"preset": [16, 64], "mean_output_tokens": [30.0, 50.0]})
    own = [{"budget": 20, "n_output_tokens": 25}, {"budget": None, "n_output_tokens": 40}]
    fig = adherence_figure({"m": sweep}, {"m": own}, tmp_path / "a.png")
    left, right = fig.axes
    assert list(left.lines[0].get_ydata()) == [30.0, 50.0] and list(left.lines[1].get_xdata()) == [0, 64]
    assert right.collections[0].get_offsets().tolist() == [[20, 25]] and (tmp_path / "a.png").stat().st_size > 0
    assert "1/2 stated" in right.get_legend().get_texts()[0].get_text()
    history = [{"step": 1, "loss": 0.5, "reward": -1.0}, {"step": 2, "loss": 0.4, "reward": 0.5}, {"step": 2}]
    fig = training_figure({"g": history}, keys=("loss", "reward"))
    assert [list(ax.lines[0].get_ydata()) for ax in fig.axes] == [[0.5, 0.4], [-1.0, 0.5]]


def test_cold_start_run_resumes_reuses_and_starts_anew_when_an_input_changes(tmp_path):
    from budgetlib.training.selfbudgeter import cold_start_run

    asked = []

    def flaky(prompt, max_new_tokens, temperature, seed, prefix):
        asked.append(seed)
        if seed == 1 and fail[0]:
            raise KeyboardInterrupt  # killed during the second round
        return model(prompt, max_new_tokens, temperature, seed, prefix)

    fail = [True]
    kw = dict(max_new_tokens=64, samples=2, temperature=0.7, batch_size=1, dataset="toy", profile="smoke",
              root=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        cold_start_run(FakeBackend(flaky), PROBLEMS, **kw)
    fail[0], asked[:] = False, []
    resumed, run = cold_start_run(FakeBackend(flaky), PROBLEMS, **kw)
    assert asked == [1, 1, 1, 1]  # round 0's sampled answers were kept as they came: only round 1 again
    fresh, report = build_cold_start(FakeBackend(model), PROBLEMS, max_new_tokens=64, samples=2, temperature=0.7)
    assert resumed == fresh and run.summary()["n_results"] == report.n_results == 8
    assert run.label == "SelfBudgeter cold-start data" and run.metadata["kind"] == "training data"
    asked[:] = []
    again, run2 = cold_start_run(FakeBackend(flaky), PROBLEMS, **kw)
    assert again == fresh and run2.dir == run.dir and asked == []  # nothing changed: reused
    _, run3 = cold_start_run(FakeBackend(flaky), PROBLEMS, **{**kw, "max_new_tokens": 32})
    _, run4 = cold_start_run(FakeBackend(flaky, model_id="other"), PROBLEMS, **kw)
    assert len({run.dir, run3.dir, run4.dir}) == 3  # any input changed: a new run
