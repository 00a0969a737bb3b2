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


def test_outputs_copies_a_runs_outputs_into_the_committed_notebooks(tmp_path, capsys):
    """What keeps the committed notebooks' outputs those of a make run of the same code."""
    import nbformat

    root, checkout = tmp_path / "repo", tmp_path / "other-clone"
    ran_dir = checkout / "results" / "notebooks" / "smoke"
    (root / "notebooks").mkdir(parents=True)
    ran_dir.mkdir(parents=True)
    (checkout / "budgetlib").mkdir()
    (checkout / "budgetlib" / "__init__.py").write_text("")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('PROFILE = "smoke"', metadata={"tags": ["parameters"]}),
                                         nbformat.v4.new_code_cell("1 + 1"), nbformat.v4.new_markdown_cell("# done")])
    nbformat.write(nb, root / "notebooks" / "01_x.ipynb")
    ran = nbformat.v4.new_notebook(cells=[nb.cells[0], nbformat.v4.new_code_cell('PROFILE = "smoke"',
                                                                                 metadata={"tags": ["injected-parameters"]}),
                                          nbformat.v4.new_code_cell("1 + 1"), nb.cells[2]])
    ran.cells[2].outputs = [nbformat.v4.new_output("execute_result", data={"text/plain": "2"}, execution_count=3),
                            nbformat.v4.new_output("stream", name="stderr", text="gen: 100%|##| 4/4 [00:01, 2.0it/s]\r"),
                            nbformat.v4.new_output("stream", name="stderr",
                                                   text=f"{checkout}/budgetlib/data.py:3: DataWarning: x\n")]
    nbformat.write(ran, ran_dir / "01_x.ipynb")
    assert main(["outputs", str(ran_dir), "--root", str(root)]) == 0
    out = nbformat.read(root / "notebooks" / "01_x.ipynb", as_version=4)
    assert [c.source for c in out.cells] == [c.source for c in nb.cells]  # no injected cell
    result, warning = out.cells[1].outputs  # the progress bar is dropped
    assert result["data"]["text/plain"] == "2"
    assert warning["text"] == "budgetlib/data.py:3: DataWarning: x\n"  # no machine's path is committed
    ran.cells[2].source = "1 + 2"  # outputs of other code are refused
    nbformat.write(ran, ran_dir / "01_x.ipynb")
    assert main(["outputs", str(ran_dir), "--root", str(root)]) == 2
    assert "code cells differ" in capsys.readouterr().err
