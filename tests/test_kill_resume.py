"""Kill and resume, for real: each step runs in a subprocess that is SIGKILLed at a point the test
picks (after k records, or halfway through writing a record), then runs again to the end; the
results must equal an uninterrupted run's: same records, none duplicated, none lost. A training
run killed after a checkpoint continues from it and ends at the same step count."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from budgetlib.runs import find_runs

TARGET = Path(__file__).with_name("kill_target.py")
STEPS = {"search": "02_budget_search", "evaluation": "evaluate", "cold_start": "07_selfbudgeter"}


def start(step, root, *extra):
    return subprocess.Popen([sys.executable, str(TARGET), step, str(root), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(step, root):
    done = subprocess.run([sys.executable, str(TARGET), step, str(root)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stderr


def records(root, step):
    """Finished records, plus the answers kept so far (the cold start writes its records at the end)."""
    import sqlite3

    files = list(Path(root).glob(f"{STEPS[step]}/*/items.jsonl"))
    kept = 0
    for db in Path(root).glob(f"{STEPS[step]}/*/answers.sqlite"):
        try:
            kept += sqlite3.connect(db).execute("SELECT COUNT(*) FROM generations").fetchone()[0] // 8
        except sqlite3.Error:
            pass
    return sum(f.read_bytes().count(b"\n") for f in files) + (kept if step == "cold_start" else 0)


def kill_when(proc, ready, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before the kill point: {proc.stdout.read()}")
        if ready():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.01)
    proc.kill()
    pytest.fail("kill point not reached")


def final(root, step):
    (run,) = find_runs(STEPS[step], root=root)
    items = run.items()
    return run.summary(), sorted(json.dumps(i, sort_keys=True) for i in items), [i["id"] for i in items]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = {}
    for step in STEPS:
        root = tmp_path_factory.mktemp(f"whole_{step}")
        finish(step, root)
        out[step] = final(root, step)
    return out


@pytest.mark.parametrize("step", list(STEPS))
@pytest.mark.parametrize("after", [1, 3])
def test_killed_after_k_records_resumes_to_the_same_results(step, after, tmp_path, uninterrupted):
    proc = start(step, tmp_path)
    kill_when(proc, lambda: records(tmp_path, step) >= after)
    assert find_runs(STEPS[step], root=tmp_path) == []  # killed before it finished
    finish(step, tmp_path)
    summary, items, ids = final(tmp_path, step)
    assert (summary, items) == uninterrupted[step][:2]
    assert len(ids) == len(set(ids))  # none duplicated (and, equal to the whole run's, none lost)


@pytest.mark.parametrize("step", list(STEPS))
def test_killed_mid_write_drops_the_torn_line_says_so_and_redoes_it(step, tmp_path, uninterrupted):
    proc = start(step, tmp_path, "--tear")
    proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read()
    (items_file,) = Path(tmp_path).glob(f"{STEPS[step]}/*/items.jsonl")
    assert not items_file.read_bytes().endswith(b"\n")  # the torn line is there
    log = finish(step, tmp_path)
    assert f"{items_file}:" in log and "dropping a truncated last line" in log  # the user is told: file and line
    assert final(tmp_path, step)[:2] == uninterrupted[step][:2]


@pytest.mark.integration
def test_killed_training_continues_from_its_last_checkpoint(tmp_path):
    proc = start("training", tmp_path)
    kill_when(proc, lambda: any(Path(tmp_path).glob("05_tale_pt_sft/*/checkpoint-2/trainer_state.json")),
              timeout=600)
    finish("training", tmp_path)
    (run,) = find_runs("05_tale_pt_sft", root=tmp_path)
    summary = run.summary()
    assert summary["global_step"] == 6 and summary["resumed_from"].endswith(("checkpoint-2", "checkpoint-4"))
