"""The child of tests/test_kill_resume.py: runs one step into a results root, slowly enough to be
killed at a chosen point. `python kill_target.py <step> <root> [--tear]`: with --tear the process
SIGKILLs itself halfway through writing its second record (a torn last line)."""

import os
import signal
import sys
import time

from budgetlib import data, runs
from budgetlib.backends import FakeBackend

STEP, ROOT, TEAR = sys.argv[1], sys.argv[2], "--tear" in sys.argv
PROBLEMS = data.load("synthetic", "test", limit=24)


GOLD = {p.question: p.answer for p in PROBLEMS}


def respond(prompt, max_new_tokens, temperature, seed, prefix):
    """Right for about half the questions (a hash of the request decides), a varying length."""
    digest = __import__("hashlib").sha256(f"{prompt}{temperature}{seed}{prefix}".encode()).digest()
    gold = next((a for q, a in GOLD.items() if q in prompt), "0")
    answer = gold if digest[0] % 2 else str(int(digest[1]) + 1000)
    return " ".join(["step"] * (3 + digest[2] % 40)) + f" Answer: [[{answer}]]"


class Slow(FakeBackend):
    """The scripted fake, 20 ms per request: a kill lands between records, mid-round or mid-write."""

    def __init__(self):
        super().__init__(respond)

    def generate(self, prompts, **kw):
        time.sleep(0.02 * len(prompts))
        return super().generate(prompts, **kw)


if TEAR:  # an append (the second; the cold start's only one) writes half, flushes it, and the process dies
    real, calls = runs.append_jsonl, []

    def torn(path, rows):
        calls.append(path)
        if len(calls) == (1 if STEP == "cold_start" else 2):
            line = "".join(__import__("json").dumps(r, default=str) + "\n" for r in rows)
            with open(path, "a") as f:
                f.write(line[: len(line) // 2])
                f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        real(path, rows)

    runs.append_jsonl = torn


def main():
    backend = Slow()
    if STEP == "search":
        from budgetlib.search import search_run

        search_run(backend, PROBLEMS, dataset="t", profile="smoke", root=ROOT, batch_size=4, group_size=4,
                   max_new_tokens=64, progress=False)
    elif STEP == "evaluation":
        from budgetlib.evaluate import VANILLA, evaluate_run

        evaluate_run(backend, PROBLEMS, VANILLA, max_new_tokens=64, dataset="t", profile="smoke", root=ROOT,
                     chunk_size=4)
    elif STEP == "cold_start":
        from budgetlib.training.selfbudgeter import cold_start_run

        cold_start_run(backend, PROBLEMS, max_new_tokens=64, samples=3, temperature=0.7, batch_size=2,
                       dataset="t", profile="smoke", root=ROOT)
    elif STEP == "training":
        from budgetlib.training.config import load_recipe
        from budgetlib.training.data import SFTExample
        from budgetlib.training.train import train_run

        items = [SFTExample(p.id, p.question, f"{p.answer}. Answer: [[{p.answer}]]", 8, 8, "search")
                 for p in PROBLEMS[:8]]
        recipe = load_recipe("tale_pt_sft", max_steps=6, save_steps=2, batch_size=2, epochs=1)
        train_run("05_tale_pt_sft", recipe, items, label="TALE-PT SFT", dataset="t", profile="smoke", root=ROOT)
    else:
        raise SystemExit(f"unknown step {STEP}")


if __name__ == "__main__":
    main()
