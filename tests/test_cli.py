import json

import budgetlib.backends
from budgetlib.cli import main
from budgetlib.backends import FakeBackend

from conftest import solving_responder


def test_search_command_runs_and_resumes(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_hf(model, batch_size):
        backend = FakeBackend(solving_responder, model_id=f"fake:{model}")
        calls.append(backend)
        return backend

    monkeypatch.setattr(budgetlib.backends, "HFBackend", fake_hf)
    out = tmp_path / "run"
    argv = ["search", "--data", "synthetic", "--split", "train", "--limit", "6", "--out", str(out), "--no-cache"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["run_dir"] == str(out) and summary["n"] == 6
    items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in items) == [f"synthetic:train:{i}" for i in range(6)]
    assert json.loads((out / "config.json").read_text())["search"]["strategy"] == "halving"
    assert main(argv) == 0 and calls[-1].calls == []  # finished: nothing generated again
    capsys.readouterr()
    assert main(argv + ["--strategy", "binary"]) == 2  # another config into the same run directory
    assert "different config" in capsys.readouterr().err


def test_bad_dataset_is_a_clear_error(capsys):
    assert main(["search", "--data", "nope"]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err
