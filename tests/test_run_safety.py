"""A run directory is safe to reopen: one writer at a time (a lock file with its pid, a dead
writer's lock taken over), a corrupt file is an error naming it, a run written by another
budgetlib version is reused with a warning."""

import json
import logging
import subprocess
import sys

import pytest

from budgetlib.runs import RunError, open_run, reuse


def test_a_second_writer_is_refused_with_the_run_and_the_pid(tmp_path):
    run = open_run(tmp_path / "r", {"a": 1})
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run.dir / "lock").write_text(f"{holder.pid} elsewhere\n")
        with pytest.raises(RunError, match=rf"{run.dir} is being written by process {holder.pid}"):
            with run.writing():
                pass
        assert (run.dir / "lock").exists()  # the other writer's lock is left alone
    finally:
        holder.kill()
        holder.wait()


def test_a_dead_writers_lock_is_taken_over_with_a_message(tmp_path, caplog):
    run = open_run(tmp_path / "r", {"a": 1})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run.dir / "lock").write_text(f"{dead.pid} here\n")
    with caplog.at_level(logging.WARNING, logger="budgetlib.runs"):
        with run.writing():
            assert (run.dir / "lock").read_text().split()[0] == str(__import__("os").getpid())
            with run.writing():  # re-entrant in the same process
                pass
    assert f"taking over the lock of process {dead.pid}" in caplog.text
    assert not (run.dir / "lock").exists()  # released


def test_reuse_holds_the_lock_while_computing(tmp_path):
    seen = []

    def compute(run):
        seen.append((run.dir / "lock").exists())
        run.finish({"ok": True})
        return 1

    value, run = reuse("s", {"a": 1}, compute, lambda r: 2, label="x", kind="evaluation", dataset="d",
                       profile="smoke", root=tmp_path)
    assert (value, seen, (run.dir / "lock").exists()) == (1, [True], False)
    assert reuse("s", {"a": 1}, compute, lambda r: 2, label="x", kind="evaluation", dataset="d", profile="smoke",
                 root=tmp_path)[0] == 2


@pytest.mark.parametrize("name", ["config.json", "metadata.json"])
def test_a_corrupt_run_file_is_an_error_naming_it(tmp_path, name):
    run = open_run(tmp_path / "r", {"a": 1})
    (run.dir / name).write_text('{"a": ')
    with pytest.raises(RunError, match=rf"{run.dir / name}: corrupt run file.*move that run directory away"):
        open_run(tmp_path / "r", {"a": 1})


def test_a_run_from_another_budgetlib_version_is_reused_with_a_warning(tmp_path, caplog):
    run = open_run(tmp_path / "r", {"a": 1})
    meta = json.loads((run.dir / "metadata.json").read_text())
    meta["versions"]["budgetlib"] = "0.0.1"
    (run.dir / "metadata.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="budgetlib.runs"):
        assert open_run(tmp_path / "r", {"a": 1}).dir == run.dir
    assert "written by budgetlib 0.0.1" in caplog.text
