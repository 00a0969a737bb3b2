"""budgetlib.results: run directories of every step read back with the label
and dataset each run recorded, duplicates collapsed to the newest, missing
methods NaN (never 0), profiles kept apart. The runs are made the way
notebooks 01-07 make them (evaluate_run / selfbudgeter_run with a fake
backend, with the labels the notebooks pass)."""

import json
import math
import os

import pytest

from budgetlib import data, results
from budgetlib.backends import FakeBackend
from budgetlib.estimators import ConstantEstimator
from budgetlib.evaluate import DIRECT_ANSWER, VANILLA, budgeted, compare_methods, estimated, evaluate_run
from budgetlib.runs import find_runs, run_metadata, start_run
from budgetlib.training.selfbudgeter import selfbudgeter_run


class Adapted(FakeBackend):
    """A fake with the HF backend's identity for stacked LoRA adapters."""

    def __init__(self, respond, adapters):
        shas = [a["sha256"] for a in adapters]
        super().__init__(respond, model_id="fake-solver" + "".join(f"+lora:{s}" for s in shas))
        self.adapters = adapters

    def identity(self):
        adapter = None if not self.adapters else self.adapters[0] if len(self.adapters) == 1 else self.adapters
        return {**super().identity(), "device": "cpu", "adapter": adapter}


def trained(step, run_id, sha):
    """An adapter as the HF backend's identity records it (the path another machine saw)."""
    return {"path": f"/elsewhere/results/{step}/{run_id}/adapter", "sha256": sha}


def age(run, seconds):
    """Make a run's summary `seconds` old, so "newest" is well defined."""
    t = 1_700_000_000 - seconds
    os.utime(run.summary_path, (t, t))


@pytest.fixture
def problems():
    return data.load("synthetic", "test", limit=6)


@pytest.fixture
def root(tmp_path, fake, problems):
    """Every step's evaluations on the same 6 questions, oldest first."""
    kw = dict(max_new_tokens=64, profile="smoke")
    compare_methods(fake, {"synthetic": problems}, [DIRECT_ANSWER, VANILLA, budgeted(10)],
                    step="01_token_redundancy", root=tmp_path, **kw)
    estimators = [estimated(name, ConstantEstimator(b), label=label)
                  for name, b, label in (("tale_ep_zero_shot", 8, "TALE-EP"), ("tale_ep_learned", 9, "learned predictor"),
                                         ("oracle", 7, "oracle budget"))]
    compare_methods(fake, {"synthetic/test": problems}, [DIRECT_ANSWER, VANILLA, budgeted(10), *estimators],
                    step="04_tale_ep", root=tmp_path, **kw)
    sft = Adapted(fake.respond, [trained("05_tale_pt_sft", "sft1", "aaa")])
    cond = Adapted(fake.respond, [trained("05_tale_pt_sft", "cond1", "bbb")])
    dpo = Adapted(fake.respond, [trained("06_tale_pt_dpo", "dpo1", "ccc")])
    cold = trained("07_selfbudgeter", "cold1", "ddd")
    grpo = trained("07_selfbudgeter", "grpo1", "eee")
    for backend, method, step, label in (
            (sft, VANILLA, "05_tale_pt_sft", "TALE-PT SFT"),
            (cond, estimated("learned_budget", ConstantEstimator(9)), "05_tale_pt_sft", "budget-conditioned SFT"),
            (dpo, VANILLA, "06_tale_pt_dpo", "TALE-PT DPO"), (sft, VANILLA, "06_tale_pt_dpo", "TALE-PT SFT")):
        evaluate_run(backend, problems, method, dataset="synthetic/test", step=step, root=tmp_path, label=label, **kw)
    for backend, stage in ((fake, "SelfBudgeter prompt, base model"), (Adapted(fake.respond, [cold]), "SelfBudgeter cold start"),
                           (Adapted(fake.respond, [cold, grpo]), "SelfBudgeter GRPO")):
        for preset in (None, 32):
            selfbudgeter_run(backend, problems, preset=preset, dataset="synthetic/test", root=tmp_path, label=stage,
                             **kw)
    # 02's search: not an evaluation
    search = start_run("02_budget_search", {"backend": fake.identity(), "dataset": "synthetic/test",
                                            "ids": [p.id for p in problems], "search": {"strategy": "halving"}},
                       metadata=run_metadata(fake.identity(), dataset="synthetic/test", n=6, profile="smoke"),
                       root=tmp_path)
    search.finish({"n": 6, "n_vanilla_correct": 3, "token_saving": 0.5})
    steps = ("01_token_redundancy", "04_tale_ep", "05_tale_pt_sft", "06_tale_pt_dpo", "07_selfbudgeter")
    ordered = [r for step in steps for r in find_runs(step, root=tmp_path)]
    for i, run in enumerate(ordered):
        age(run, 1000 - i)
    return tmp_path


def test_every_steps_runs_get_their_label(root):
    frame = results.collect(root, profile="smoke")
    assert set(frame.method) == {
        "direct answer", "vanilla CoT", "fixed budget β=10", "TALE-EP", "learned predictor", "oracle budget",
        "TALE-PT SFT", "budget-conditioned SFT", "TALE-PT DPO", "SelfBudgeter prompt, base model (own budget)",
        "SelfBudgeter cold start (own budget)", "SelfBudgeter GRPO (own budget)",
        "SelfBudgeter prompt, base model, preset 32", "SelfBudgeter cold start, preset 32",
        "SelfBudgeter GRPO, preset 32"}
    assert set(frame.dataset) == {"synthetic/test"}  # 01's "synthetic" is the same questions
    assert set(frame.model) == {"fake-solver"} and set(frame.profile) == {"smoke"}
    grpo = frame.set_index("method").loc["SelfBudgeter GRPO (own budget)"]
    assert grpo.adapter == "+lora:ddd+lora:eee" and 0 <= grpo.well_formed_rate <= 1
    assert not frame.method.str.contains("unrecognised").any()


def test_same_evaluation_in_several_notebooks_is_one_row_the_newest(root):
    frame = results.collect(root).set_index("method")
    assert frame.index.is_unique
    assert frame.loc["direct answer", "step"] == "04_tale_ep" and frame.loc["direct answer", "n_runs"] == 2
    assert frame.loc["direct answer", "steps"] == "01_token_redundancy, 04_tale_ep"
    assert frame.loc["TALE-PT SFT", "step"] == "06_tale_pt_dpo" and frame.loc["TALE-PT SFT", "n_runs"] == 2
    assert frame.loc["vanilla CoT", "n_runs"] == 2  # 01 and 04; the adapted ones are other methods


def test_missing_methods_are_nan_rows_not_zeros(root):
    for run in (root / "06_tale_pt_dpo").glob("*/summary.json"):
        run.unlink()  # notebook 06 not run (or interrupted)
    frame = results.collect(root)
    assert "TALE-PT DPO" not in set(frame.method)
    assert math.isnan(frame.set_index("method").loc["vanilla CoT", "mean_relative_deviation"])  # not recorded
    table = results.side_by_side(frame).set_index("method")
    dpo = table.loc["TALE-PT DPO"]
    assert math.isnan(dpo.accuracy) and math.isnan(dpo.mean_output_tokens) and dpo.note.startswith("missing")
    assert "SelfBudgeter GRPO, preset 32" not in table.index  # presets only on request
    assert "SelfBudgeter GRPO, preset 32" in set(results.side_by_side(frame, presets=True).method)
    assert table.loc["vanilla CoT", "token_change_vs_vanilla"] == 0
    order = list(table.index)
    assert order[:3] == ["direct answer", "vanilla CoT", "fixed budget β=10"]


def test_nothing_ran_yet(tmp_path):
    frame = results.collect(tmp_path / "nowhere")
    assert frame.empty and {"dataset", "method", "accuracy", "note"} <= set(frame.columns)
    table = results.side_by_side(frame)
    assert list(table.method) == [m for m, _ in results.EXPECTED] and table.note.str.startswith("missing").all()
    assert results.search_summary(tmp_path / "nowhere").empty


def test_profiles_are_kept_apart(root, fake, problems):
    run = evaluate_run(fake, problems, VANILLA, max_new_tokens=64, dataset="synthetic/test", profile="full",
                       step="04_tale_ep", root=root / "full")
    for d in (root / "full" / "04_tale_ep").iterdir():
        d.rename(root / "04_tale_ep" / ("full" + d.name))
    assert run.summary["n"] == 6
    assert set(results.collect(root, profile="smoke").profile) == {"smoke"}
    assert set(results.collect(root, profile="full").method) == {"vanilla CoT"}
    both = results.collect(root)
    assert len(both[both.method == "vanilla CoT"]) == 2  # same questions, other profile: not a duplicate


def test_searches_are_summarised_apart(root):
    searches = results.search_summary(root)
    assert list(searches.dataset) == ["synthetic/test"] and searches.token_saving.iloc[0] == 0.5
    assert "02_budget_search" not in set(results.collect(root).step)


def test_the_label_a_run_recorded_is_its_method_never_a_guess(tmp_path, fake, problems):
    kw = dict(max_new_tokens=64, profile="smoke", step="01_token_redundancy", root=tmp_path)
    compare_methods(fake, {"gsm8k": problems}, [budgeted(50, "words"), budgeted(50), budgeted(50, "strict")], **kw)
    evaluate_run(fake, problems, VANILLA, dataset="x", label="my own label", **kw)
    frame = results.collect(tmp_path)
    assert sorted(frame.method) == ["fixed budget β=50", "fixed budget β=50 (strict)", "fixed budget β=50 (words)",
                                    "my own label"]
    assert set(frame.dataset) == {"synthetic/test"}  # from the problems' ids, whatever the notebook called them
    table = results.side_by_side(frame)
    fixed = [m for m in table.method if m.startswith("fixed")]
    assert fixed == ["fixed budget β=50", "fixed budget β=50 (strict)", "fixed budget β=50 (words)"]
    meta = json.loads(next((tmp_path / "01_token_redundancy").glob("*/metadata.json")).read_text())
    assert {meta["kind"], meta["profile"], meta["n"]} == {"evaluation", "smoke", 6}


def test_a_run_without_a_recorded_label_is_shown_as_unlabelled(tmp_path):
    config = {"method": "my_new_method", "backend": {"model": "m"}, "dataset": "d", "ids": ["d:test:0"]}
    run = start_run("09_new", config, metadata={"profile": "smoke", "n": 1}, root=tmp_path)
    run.finish({"n": 1, "accuracy": 1.0})
    row = results.collect(tmp_path).iloc[0]
    assert row.method == "unlabelled: my_new_method"
    assert row.note == f"made before runs recorded their label: rerun 09_new ({run.dir.name})"
    assert row.accuracy == 1.0 and math.isnan(row.mean_output_tokens)


def test_paper_numbers_are_labelled_and_exact():
    paper = results.paper_numbers()
    assert (paper.profile == "paper").all() and paper.note.str.contains("paper number, not ours").all()
    tale = paper[paper.model == "Llama-3.1-8B-Instruct"].set_index("method")
    assert tale.loc["vanilla CoT", ["accuracy", "mean_output_tokens"]].tolist() == [0.7756, 241.5]
    assert tale.loc["TALE-PT SFT", ["accuracy", "mean_output_tokens"]].tolist() == [0.7857, 139.6]
    assert tale.loc["TALE-PT DPO", ["accuracy", "mean_output_tokens"]].tolist() == [0.7411, 149.9]
    assert sorted(paper.length_compression.dropna()) == [0.48, 0.61]


def test_beside_papers_and_figure(root, tmp_path):
    table = results.side_by_side(results.collect(root))
    both = results.beside_papers(table)
    assert {"ours", *results.paper_numbers().source} == set(both.source)
    assert both[["model", "dataset", "profile", "device"]].notna().all().all()
    ours = both[both.source == "ours"].set_index("method")
    assert ours.loc["vanilla CoT", "length_compression"] == 0 and ours.loc["vanilla CoT", "n"] == 6
    from budgetlib.plots import frontier_figure as results_frontier

    results_frontier(table, tmp_path / "f.png")
    results_frontier(results.collect(tmp_path / "nowhere"), tmp_path / "empty.png")
    assert (tmp_path / "f.png").stat().st_size > 0 and (tmp_path / "empty.png").exists()


def test_a_preset_row_keeps_the_newest_adapter(tmp_path, fake, problems):
    old = Adapted(fake.respond, [trained("07_selfbudgeter", "cold_old", "old")])
    new = Adapted(fake.respond, [trained("07_selfbudgeter", "cold_new", "new")])
    kw = dict(max_new_tokens=64, profile="smoke", dataset="synthetic/test", root=tmp_path, label="SelfBudgeter cold start")
    for backend, preset in ((old, 32), (old, None), (new, None), (new, 16)):
        selfbudgeter_run(backend, problems, preset=preset, **kw)
    for i, run in enumerate(find_runs("07_selfbudgeter", root=tmp_path)):
        age(run, 100 - i)
    frame = results.collect(tmp_path).set_index("method")
    assert frame.loc["SelfBudgeter cold start (own budget)", "adapter"] == "+lora:new"  # the newest kept
    assert frame.loc["SelfBudgeter cold start, preset 32", "adapter"] == "+lora:old"
    assert frame.loc["SelfBudgeter cold start, preset 16", "note"] == ""


def test_markdown_table_has_a_cell_per_method_and_dataset(root):
    frame = results.collect(root)
    for run in (root / "06_tale_pt_dpo").glob("*/summary.json"):
        run.unlink()
    table = results.side_by_side(results.collect(root))
    md = results.markdown_table(table).splitlines()
    assert md[0] == "**fake-solver** · profile smoke · cpu, unknown"  # devices of its runs (the plain fake: unknown)
    assert md[2] == "| method | synthetic/test (n=6) |"
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1].rstrip(" |") for line in md[4:] if line.startswith("| ")}
    assert rows["TALE-PT DPO"] == "missing"
    vanilla = frame.set_index("method").loc["vanilla CoT"]
    assert rows["vanilla CoT"] == (f"{vanilla.accuracy:.0%} [{vanilla.accuracy_ci_low:.0%}, "
                                   f"{vanilla.accuracy_ci_high:.0%}] · {vanilla.mean_output_tokens:.0f} tok")
    change = frame.set_index("method").loc["direct answer", "mean_output_tokens"] / vanilla.mean_output_tokens - 1
    assert rows["direct answer"].endswith(f"tok ({change:+.0%})")
    assert list(rows)[:3] == ["direct answer", "vanilla CoT", "fixed budget β=10"]
    assert results.markdown_table(results.side_by_side(results.collect(root / "none"))).startswith("No finished")


def test_replace_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- t:start -->\nold\n<!-- t:end -->\nafter\n")
    assert results.replace_block(readme, "t", "new\n")
    assert readme.read_text() == "intro\n<!-- t:start -->\nnew\n<!-- t:end -->\nafter\n"
    assert not results.replace_block(readme, "t", "new")
    with pytest.raises(ValueError, match="README.md.*<!-- u:start -->"):
        results.replace_block(readme, "u", "x")


def test_a_paid_estimate_and_forced_budgets_show_in_the_table(tmp_path, fake, problems):
    """TALE-EP's cell carries its total with the estimator's own tokens (not "+0%" when it spent tokens to
    estimate), its fallback share; budget forcing sorts after the stated budgets; a method run on other
    questions than vanilla CoT gets no change against it, and a note saying why."""
    from budgetlib.estimators import BudgetEstimate
    from budgetlib.evaluate import forced

    class Paying(ConstantEstimator):  # a constant estimate that cost 30 tokens per question, 1 in 2 a fallback
        def estimate(self, problems):
            return [BudgetEstimate(None if i % 2 else self.budget, "paid" + (":fallback" if i % 2 else ""), cost_tokens=30)
                    for i, _ in enumerate(problems)]

    kw = dict(max_new_tokens=64, profile="smoke", root=tmp_path)
    compare_methods(fake, {"synthetic/test": problems}, [VANILLA, estimated("tale_ep_zero_shot", Paying(8), label="TALE-EP"),
                                                         forced(4), forced(16), budgeted(10)], **kw)
    compare_methods(fake, {"synthetic/test": problems[:4]}, [budgeted(50)], **kw)
    table = results.side_by_side(results.collect(tmp_path)).set_index("method")
    vanilla, tale = table.loc["vanilla CoT"], table.loc["TALE-EP"]
    assert tale.mean_total_tokens == tale.mean_output_tokens + 30
    md = results.markdown_table(table.reset_index())
    cell = next(line for line in md.splitlines() if line.startswith("| TALE-EP |"))
    total_change = tale.mean_total_tokens / vanilla.mean_output_tokens - 1
    assert cell.endswith(f"· total {tale.mean_total_tokens:.0f} tok ({total_change:+.0%}) · 50% fallback |")
    order = [line.split(" | ")[0][2:] for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert order[order.index("vanilla CoT") + 1:][:4] == ["fixed budget β=10", "fixed budget β=50",
                                                         "budget forcing β=4", "budget forcing β=16"]
    other = table.loc["fixed budget β=50"]
    assert math.isnan(other.token_change_vs_vanilla) and "other questions than vanilla CoT (n=4 vs 6)" in other.note
    assert not math.isnan(table.loc["budget forcing β=4", "token_change_vs_vanilla"])
