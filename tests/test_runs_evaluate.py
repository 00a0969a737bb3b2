import json

import pytest

from budgetlib import data
from budgetlib.backends import FakeBackend
from budgetlib.evaluate import (DIRECT_ANSWER, VANILLA, Method, budgeted, compare_methods, evaluate,
                                evaluate_run, summarize, wilson_interval)
from budgetlib.prompts import BUDGETED_COT, VANILLA_COT
from budgetlib.runs import RunError, read_jsonl, start_run


@pytest.fixture
def problems():
    return data.load("synthetic", "test", limit=30)


def test_wilson_reference_values():
    # reference: Wilson (1927) score interval, z = 1.96
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 20) == pytest.approx((0.0, 0.1611), abs=1e-4)
    assert wilson_interval(20, 20) == pytest.approx((0.8389, 1.0), abs=1e-4)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_summarize_values():
    rows = [{"correct": True, "n_output_tokens": 10, "prediction": "1", "finish_reason": "stop"},
            {"correct": False, "n_output_tokens": 30, "prediction": None, "finish_reason": "length"},
            {"correct": True, "n_output_tokens": 20, "prediction": "3", "finish_reason": "stop"},
            {"correct": False, "n_output_tokens": 40, "prediction": "9", "finish_reason": "stop"}]
    s = summarize(rows)
    assert (s["n"], s["n_correct"], s["accuracy"]) == (4, 2, 0.5)
    assert (s["mean_output_tokens"], s["median_output_tokens"], s["total_output_tokens"]) == (25, 25, 100)
    assert (s["unparseable_rate"], s["truncated_rate"]) == (0.25, 0.25)


def test_evaluate_judges_with_the_shared_judge(fake, problems):
    ev = evaluate(fake, problems, VANILLA, max_new_tokens=64)
    import re

    for p, row in zip(problems, ev.rows):
        first = int(re.findall(r"\d+", p.question)[0])
        assert row["id"] == p.id and row["correct"] == (first % 2 == 0)
        assert row["n_output_tokens"] == 14 and row["finish_reason"] == "stop"
    assert ev.summary["accuracy"] == sum(r["correct"] for r in ev.rows) / len(problems)
    short = evaluate(fake, problems, budgeted(10), max_new_tokens=64)
    assert short.summary["mean_output_tokens"] == 6 and short.summary["accuracy"] == ev.summary["accuracy"]
    cut = evaluate(fake, problems, VANILLA, max_new_tokens=5)
    assert cut.summary["truncated_rate"] == 1.0 and cut.summary["unparseable_rate"] == 1.0


def test_method_validation():
    with pytest.raises(ValueError, match="needs budget"):
        Method("b", BUDGETED_COT)
    with pytest.raises(ValueError, match="takes no budget"):
        Method("v", VANILLA_COT, 10)
    with pytest.raises(ValueError, match="positive integer"):
        budgeted(0)


def test_run_resume_matches_uninterrupted(fake, problems, tmp_path):
    full = evaluate(fake, problems, VANILLA, max_new_tokens=64)
    run = start_run("t", {"k": 1}, root=tmp_path)
    run.append([{**r} for r in full.rows[:7]])
    with run.items_path.open("a") as f:  # a write cut off mid-line
        f.write('{"id": "synthetic:test:7", "corr')
    counting = FakeBackend(fake.respond)
    resumed = evaluate(counting, problems, VANILLA, max_new_tokens=64, run=run, chunk_size=10)
    assert resumed.rows == full.rows and resumed.summary == full.summary
    assert sum(len(c) for c in counting.calls) == len(problems) - 7
    assert [r["id"] for r in read_jsonl(run.items_path)] == [p.id for p in problems]
    assert json.loads(run.summary_path.read_text()) == full.summary


def test_run_refuses_other_config_and_overwrite(tmp_path):
    run = start_run("s", {"a": 1}, root=tmp_path, metadata={"model": "m", "profile": "smoke"})
    assert run.metadata["model"] == "m" and "versions" in run.metadata and "git_sha" in run.metadata
    assert start_run("s", {"a": 1}, root=tmp_path).dir == run.dir
    with pytest.raises(RunError, match=r"different config \(differs in \['a'\]\)"):
        start_run("s", {"a": 2}, root=tmp_path, run_id=run.dir.name)
    run.append([{"id": "x"}])
    run.finish({"n": 1})
    with pytest.raises(RunError, match="overwrite=True"):
        run.finish({"n": 2})
    with pytest.raises(RunError, match="is finished"):
        run.append([{"id": "y"}])
    run.finish({"n": 3}, overwrite=True)
    assert run.summary() == {"n": 3}


def test_malformed_middle_line_is_an_error(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(RunError, match=r"items\.jsonl:2: malformed"):
        read_jsonl(path)


def test_evaluate_run_is_reused(fake, problems, tmp_path):
    first = evaluate_run(fake, problems, DIRECT_ANSWER, max_new_tokens=32, dataset="synthetic",
                         profile="smoke", root=tmp_path)
    counting = FakeBackend(fake.respond, model_id=fake.model_id)
    again = evaluate_run(counting, problems, DIRECT_ANSWER, max_new_tokens=32, dataset="synthetic",
                         profile="smoke", root=tmp_path)
    assert counting.calls == [] and again.summary == first.summary and again.run.dir == first.run.dir
    assert first.run.metadata["n"] == 30 and first.run.metadata["dataset"] == "synthetic/test"  # from the ids
    assert first.run.label == "direct answer" and first.run.metadata["kind"] == "evaluation"


def test_compare_methods_frame(fake, problems, tmp_path):
    summary, items = compare_methods(fake, {"a": problems[:10], "b": problems[10:]},
                                     [VANILLA, budgeted(5)], max_new_tokens=64, profile="smoke", root=tmp_path)
    assert list(summary[["dataset", "method"]].itertuples(index=False, name=None)) == \
        [("a", "vanilla_cot"), ("a", "budget_5"), ("b", "vanilla_cot"), ("b", "budget_5")]
    assert len(items) == 2 * len(problems)
    assert summary.set_index(["dataset", "method"]).loc[("a", "budget_5"), "mean_output_tokens"] == 6


def test_evaluate_rejects_bad_input(fake, problems):
    with pytest.raises(ValueError, match="no problems"):
        evaluate(fake, [], VANILLA, max_new_tokens=8)
    with pytest.raises(ValueError, match="unique"):
        evaluate(fake, [problems[0], problems[0]], VANILLA, max_new_tokens=8)


def test_find_runs_filters_finished_runs_oldest_first(tmp_path):
    import os

    from budgetlib.runs import find_runs, start_run

    a = start_run("s", {"method": "a"}, root=tmp_path)
    b = start_run("s", {"method": "b"}, root=tmp_path)
    start_run("s", {"method": "c"}, root=tmp_path)  # unfinished: never returned
    b.finish({"n": 1})
    a.finish({"n": 2})
    os.utime(b.summary_path, ns=(1, 1))  # b's summary is older
    assert [r.config["method"] for r in find_runs("s", root=tmp_path)] == ["b", "a"]
    assert [r.summary()["n"] for r in find_runs("s", lambda c: c["method"] == "a", root=tmp_path)] == [2]
    assert find_runs("missing", root=tmp_path) == []


def test_append_csv_appends_and_never_mixes_columns(tmp_path):
    import csv

    from budgetlib.runs import append_csv

    path = tmp_path / "b" / "x.csv"
    append_csv(path, [{"a": 1, "b": 2}])
    append_csv(path, [{"a": 3, "b": 4}, {"a": 5, "b": 6}])
    assert [r["a"] for r in csv.DictReader(path.open())] == ["1", "3", "5"]
    append_csv(path, [{"a": 7, "c": 8}])  # other columns: the old file is kept aside
    assert list(csv.DictReader(path.open())) == [{"a": "7", "c": "8"}]
    kept = [p for p in path.parent.iterdir() if p != path]
    assert len(kept) == 1 and len(list(csv.DictReader(kept[0].open()))) == 3
    with pytest.raises(ValueError, match="no rows"):
        append_csv(path, [])


def test_budget_forcing_cuts_the_reasoning_and_forces_the_answer(problems):
    from budgetlib.evaluate import forced
    from budgetlib.prompts import ANSWER_CUE

    def respond(prompt, max_new_tokens, temperature, seed, prefix):
        if prefix is not None:  # the forced answer: 7, then the closing brackets
            assert prefix.endswith(ANSWER_CUE) and len(prefix.split()) == 10 + 2
            return "7]] [[dollars]] [[per day]]" if "Yara" in prompt else "7]] done"
        n = 5 if "Jun" in prompt else 40  # one question reasons briefly, the others at length
        return " ".join(["step"] * n) + " Answer: [[3]]"

    backend = FakeBackend(respond)
    ev = evaluate(backend, problems[:4], forced(10), max_new_tokens=64)
    short = [r for r in ev.rows if "Jun" in problems[[p.id for p in problems].index(r["id"])].question]
    for row in ev.rows:
        if row in short:  # ended within its budget: kept as it was
            assert (row["forced"], row["n_output_tokens"], row["prediction"]) == (False, 7, "3")
        else:  # 10 reasoning tokens + the cue's 2 + the answer up to its first "]]" (1)
            # what a model writes after the answer's "]]" is not its answer: the judge read "per day" before
            assert (row["forced"], row["n_output_tokens"], row["prediction"]) == (True, 13, "7")
            assert row["output"] == " ".join(["step"] * 10) + ANSWER_CUE + "7]]"
            assert row["finish_reason"] == "stop"
    assert 0 < len(short) < 4 and ev.summary["forced_rate"] == (4 - len(short)) / 4
    assert ev.summary["truncated_rate"] == 0
    assert forced(10).label == "budget forcing β=10" and "budget" not in forced(10).prompt(problems[0])
    with pytest.raises(ValueError, match="budget forcing needs a budget"):
        Method("f", VANILLA.template, forced=True)


@pytest.mark.parametrize("change", ["nothing", "max_new_tokens", "model", "ids", "method", "question text"])
def test_evaluate_run_starts_anew_exactly_when_an_input_changes(fake, problems, tmp_path, change):
    """Every input that decides an evaluation is in its run's key: any change starts a new run that asks the
    model again; no change reuses the finished run without a single request."""
    from dataclasses import replace

    first = evaluate_run(fake, problems, VANILLA, max_new_tokens=32, dataset="synthetic", profile="smoke",
                         root=tmp_path)
    kw = dict(max_new_tokens=32, dataset="synthetic", profile="smoke", root=tmp_path)
    counting = FakeBackend(fake.respond, model_id="other-model" if change == "model" else fake.model_id)
    args = [counting, problems, VANILLA]
    if change == "max_new_tokens":
        kw["max_new_tokens"] = 33
    elif change == "ids":
        args[1] = problems[:-1]
    elif change == "method":
        args[2] = budgeted(50)
    elif change == "question text":
        args[1] = [replace(problems[0], question=problems[0].question + " ")] + problems[1:]
    again = evaluate_run(*args, **kw)
    if change == "nothing":
        assert again.run.dir == first.run.dir and counting.calls == []
    else:
        assert again.run.dir != first.run.dir and counting.calls, change
