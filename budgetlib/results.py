"""Every finished evaluation run side by side, and the papers' numbers beside them.

`collect` reads ``results/<step>/<run_id>/`` (config, metadata, summary) into one frame. Each run's
method and dataset are what the code that made it recorded in its metadata (`runs.reuse`: the
``label``, e.g. "TALE-PT SFT", "fixed budget β=50 (words)", "SelfBudgeter GRPO (own budget)", and
the ``dataset``, e.g. "gsm8k/test"); nothing is guessed from method names, adapter paths or steps.
A run made before runs recorded labels is shown as "unlabelled: <method>" with a note to rerun it.
Only runs of kind "evaluation" are evaluations (02's searches and 03's sweeps are summarised apart).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from pathlib import Path
from typing import Any

from .runs import results_root

__all__ = ["collect", "side_by_side", "search_summary", "paper_numbers", "beside_papers",
           "markdown_table", "replace_block", "EXPECTED", "METRICS"]

log = logging.getLogger(__name__)
SB_STAGES = {0: "SelfBudgeter prompt, base model", 1: "SelfBudgeter cold start", 2: "SelfBudgeter GRPO"}
# the methods a full run of notebooks 01-07 evaluates, in display order, with the notebook that makes each
EXPECTED = (("direct answer", "01/04"), ("vanilla CoT", "01/04"), ("TALE-EP", "04"), ("learned predictor", "04"),
            ("oracle budget", "04"), ("TALE-PT SFT", "05"), ("budget-conditioned SFT", "05"), ("TALE-PT DPO", "06"),
            ("SelfBudgeter prompt, base model (own budget)", "07"), ("SelfBudgeter cold start (own budget)", "07"),
            ("SelfBudgeter GRPO (own budget)", "07"))
METRICS = ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "mean_output_tokens", "mean_total_tokens",
           "estimator_tokens", "expense_usd", "within_budget_rate", "fallback_rate", "truncated_rate",
           "well_formed_rate", "mean_stated_budget", "mean_relative_deviation")


def _runs(root: Path, profile: str | None, want):
    """(run dir, config, metadata, summary, summary mtime) of finished runs whose (config, metadata) pass `want`."""
    for summary_path in sorted(root.glob("*/*/summary.json")):
        d = summary_path.parent
        if not (d / "config.json").is_file():
            continue
        config = json.loads((d / "config.json").read_text())
        meta = json.loads((d / "metadata.json").read_text()) if (d / "metadata.json").is_file() else {}
        if want(config, meta) and (profile is None or meta.get("profile") == profile):
            yield d, config, meta, json.loads(summary_path.read_text()), summary_path.stat().st_mtime_ns


def _keep_newest(rows: list[dict[str, Any]], key: tuple[str, ...]):
    import pandas as pd

    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows).sort_values("finished_ns")
    groups = frame.groupby(list(key), sort=False, dropna=False)
    frame["n_runs"] = groups["run_id"].transform("size")
    frame["steps"] = groups["step"].transform(lambda s: ", ".join(sorted(set(s))))
    return frame.drop_duplicates(list(key), keep="last").reset_index(drop=True)


def _is_evaluation(config: dict[str, Any], meta: dict[str, Any]) -> bool:
    return meta.get("kind") == "evaluation" or ("kind" not in meta and "method" in config)


def _note(r) -> str:
    """What a reader of one row must know: fallbacks, a run without a recorded label."""
    notes = [("every budget" if r.fallback_rate == 1 else f"{r.fallback_rate:.0%} of budgets")
             + " fell back to vanilla CoT"] if r.fallback_rate > 0 else []
    if r.method.startswith("unlabelled: "):
        notes.append(f"made before runs recorded their label: rerun {r.step} ({r.run_id})")
    return "; ".join(notes)


def collect(root: str | Path | None = None, profile: str | None = None):
    """Finished evaluation runs under `root` (default `results_root()`), of one `profile` or all: one row
    per (profile, dataset, method, base model, ids), the newest run, so an evaluation repeated by several
    notebooks or of an adapter trained again counts once (`n_runs`, `steps`: how many runs, which steps).
    A metric a run did not record is NaN, never 0; `note` (see `_note`) flags what to read with care."""
    import pandas as pd

    root = Path(root) if root is not None else results_root()
    rows = []
    for d, config, meta, summary, mtime in _runs(root, profile, _is_evaluation):
        backend = config.get("backend") or {}
        model = str(backend.get("model") or meta.get("model"))
        method = meta.get("label") or f"unlabelled: {config.get('method')}"
        rows.append({"profile": meta.get("profile"), "dataset": meta.get("dataset") or config.get("dataset"),
                     "method": method,
                     "model": model.split("+lora:")[0], "adapter": model[len(model.split("+lora:")[0]):],
                     "device": meta.get("device") or backend.get("device") or "unknown",
                     "n": summary.get("n", meta.get("n")),
                     **{m: summary.get(m) for m in METRICS}, "budget": config.get("budget"),
                     "preset": config.get("preset"), "max_new_tokens": config.get("max_new_tokens"),
                     "step": d.parent.name, "run_id": d.name, "backend_model": model, "finished_ns": mtime,
                     "ids_hash": hashlib.sha256(json.dumps(config.get("ids")).encode()).hexdigest()[:12]})
    frame = _keep_newest(rows, ("profile", "dataset", "method", "model", "ids_hash"))
    if frame.empty:
        return pd.DataFrame(columns=["profile", "dataset", "method", "model", "adapter", "device", "n", *METRICS,
                                     "step", "run_id", "backend_model", "ids_hash", "n_runs", "steps", "note"])
    numbers = [*METRICS, "budget", "preset"]
    frame[numbers] = frame[numbers].astype(float)  # a metric a run did not record: NaN
    frame["note"] = [_note(r) for r in frame.itertuples()]
    log.info("collected %d evaluation runs (%d after removing duplicates)", len(rows), len(frame))
    return frame


def _order(method: str) -> tuple:
    labels = [m for m, _ in EXPECTED]
    fixed = re.fullmatch(r"fixed budget β=(\d+)(?: \((.+)\))?", method)
    if fixed:  # after vanilla CoT, by budget, TALE's wording first
        return (labels.index("vanilla CoT"), 1, int(fixed.group(1)), fixed.group(2) or "")
    forced = re.fullmatch(r"budget forcing β=(\d+)", method)
    if forced:  # after the stated budgets, by budget
        return (labels.index("vanilla CoT"), 2, int(forced.group(1)), "")
    stage = next((i for i, s in enumerate(SB_STAGES.values()) if method.startswith(s + ", preset")), None)
    if stage is not None:
        return (len(labels) + stage, 0, int(method.rsplit(" ", 1)[1]), "")
    return (labels.index(method), 0, 0, "") if method in labels else (len(labels) + 9, 0, 0, method)


def side_by_side(frame, expected=EXPECTED, presets: bool = False):
    """Per (profile, dataset, model): every method in display order, each expected method without a
    run as a row of NaN with a "missing" note (never zeros), and the output-token change against that
    dataset's vanilla CoT (negative = shorter). User-preset SelfBudgeter rows only with `presets`."""
    import pandas as pd

    frame = frame if presets else frame.loc[[", preset " not in m for m in frame["method"]]]
    parts = []
    groups = frame.groupby(["profile", "dataset", "model"], dropna=False, sort=True) if len(frame) else []
    for (profile, dataset, model), rows in groups:
        missing = [{"profile": profile, "dataset": dataset, "model": model, "method": m,
                    "note": f"missing: no finished run (notebook {nb}, profile {profile})"}
                   for m, nb in expected if m not in set(rows["method"])]
        rows = pd.concat([rows, pd.DataFrame(missing)], ignore_index=True) if missing else rows.copy()
        vanilla = rows.loc[rows["method"] == "vanilla CoT"]
        reference = vanilla["mean_output_tokens"].iloc[0] if len(vanilla) else math.nan
        rows["token_change_vs_vanilla"] = rows["mean_output_tokens"] / reference - 1
        rows["total_change_vs_vanilla"] = rows["mean_total_tokens"] / reference - 1 if "mean_total_tokens" in rows \
            else math.nan
        if len(vanilla) and "ids_hash" in rows:  # a change is a change only on the same questions
            other = rows["ids_hash"].notna() & (rows["ids_hash"] != vanilla["ids_hash"].iloc[0])
            rows.loc[other, ["token_change_vs_vanilla", "total_change_vs_vanilla"]] = math.nan
            why = "other questions than vanilla CoT (n={:.0f} vs %.0f): no change computed" % vanilla["n"].iloc[0]
            rows.loc[other, "note"] = [f"{note}; {why.format(n)}" if isinstance(note, str) and note else why.format(n)
                                       for note, n in zip(rows.loc[other, "note"], rows.loc[other, "n"])]
        parts.append(rows.iloc[sorted(range(len(rows)), key=lambda i: _order(rows["method"].iloc[i]))])
    if not parts:  # nothing ran yet: the expected methods, all missing
        return pd.DataFrame([{"dataset": None, "method": m, "note": f"missing: no finished run (notebook {nb})"}
                             for m, nb in expected]).reindex(columns=[*frame.columns, "token_change_vs_vanilla"])
    return pd.concat(parts, ignore_index=True)


def search_summary(root: str | Path | None = None, profile: str | None = None):
    """Notebook 02's optimal-budget searches (newest per profile, dataset, model, ids, settings):
    how many vanilla answers were correct, how many got a smaller budget, and the token saving."""
    root = Path(root) if root is not None else results_root()
    rows = [{"profile": meta.get("profile"), "dataset": meta.get("dataset") or config.get("dataset"),
             "device": meta.get("device"),
             "model": (config.get("backend") or {}).get("model"), "strategy": config["search"].get("strategy"),
             "feasibility": config["search"].get("feasibility"), **summary, "step": d.parent.name, "run_id": d.name,
             "finished_ns": mtime, "key": json.dumps([config.get("ids"), config["search"]], sort_keys=True)}
            for d, config, meta, summary, mtime in _runs(root, profile, lambda c, m: "search" in c)]
    frame = _keep_newest(rows, ("profile", "dataset", "model", "key"))
    return frame.drop(columns=["key", "finished_ns"], errors="ignore")


_TALE = "TALE (arXiv 2412.18547), as quoted in this project's plan (the arXiv text not re-checked here)"
_TALE_EP = "TALE (arXiv 2412.18547), TALE-EP with GPT-4o-mini, average over its datasets"
_SB = "SelfBudgeter (arXiv 2505.11274v1, abstract)"


def paper_numbers():
    """The papers' reported numbers, labelled as such: never ours, never recomputed; the one place they
    are typed (notebooks 04-08 read them from here). Token counts in TALE's table are tiktoken (GPT-4
    encoding) counts, not the model's own tokenizer."""
    import pandas as pd

    rows = [(_TALE, "Llama-3.1-8B-Instruct", "GSM8K", m, a, t, "tiktoken (GPT-4 encoding)", None)
            for m, a, t in (("vanilla CoT", 0.7756, 241.5), ("TALE-PT SFT", 0.7857, 139.6),
                            ("TALE-PT DPO", 0.7411, 149.9))]
    rows += [(_TALE_EP, "GPT-4o-mini", "TALE's datasets (avg.)", m, a, t, "as reported (answer + estimator)", None)
             for m, a, t in (("vanilla CoT", 0.8375, 461.25), ("TALE-EP", 0.8103, 148.72))]
    rows += [(_SB, f"{size} model", "GSM8K, MATH500, AIME2025", "SelfBudgeter GRPO (own budget)", None, None, None, c)
             for size, c in (("1.5B", 0.61), ("7B", 0.48))]
    frame = pd.DataFrame(rows, columns=["source", "model", "dataset", "method", "accuracy", "mean_output_tokens",
                                        "token_counter", "length_compression"])
    frame["note"] = ["paper number, not ours"] * 5 + ["paper number, not ours: 'nearly undiminished accuracy'"] * 2
    return frame.assign(n=math.nan, profile="paper", device="not restated here")


def beside_papers(table, paper=None):
    """Our rows for the methods the papers report, next to the papers' rows: model, data size, profile
    and device on every row; our length compression = 1 - tokens / vanilla CoT tokens."""
    import pandas as pd

    paper = paper_numbers() if paper is None else paper
    ours = table[table["method"].isin(set(paper["method"])) & table["accuracy"].notna()].copy()
    ours = ours.assign(source="ours", token_counter="model's own tokenizer",
                       length_compression=0.0 - ours["token_change_vs_vanilla"] + 0.0)
    columns = ["source", "model", "dataset", "n", "profile", "device", "method", "accuracy", "mean_output_tokens",
               "token_counter", "length_compression", "note"]
    return pd.concat([ours.reindex(columns=columns), paper.reindex(columns=columns)], ignore_index=True)


def _number(x) -> float | None:
    """`x`, or None for a metric a run did not record (None or NaN)."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def _pct(x) -> str:
    return "" if _number(x) is None else f" ({x:+.0%})"


def _cell(row) -> str:
    """"acc [CI] · output tok (change)", then, for a method that paid for its budget (TALE-EP's estimator),
    "· total N tok (change)", and the share of budgets that fell back to vanilla CoT."""
    if row is None or _number(row.get("accuracy")) is None:
        return "missing"
    change = "" if row["method"] == "vanilla CoT" else _pct(row.get("token_change_vs_vanilla"))
    cell = (f"{row['accuracy']:.0%} [{row['accuracy_ci_low']:.0%}, {row['accuracy_ci_high']:.0%}]"
            f" · {row['mean_output_tokens']:.0f} tok{change}")
    total = _number(row.get("mean_total_tokens"))
    if total is not None and total > row["mean_output_tokens"] + 0.5:
        cell += f" · total {total:.0f} tok{_pct(row.get('total_change_vs_vanilla'))}"
    if (_number(row.get("fallback_rate")) or 0) > 0:
        cell += f" · {row['fallback_rate']:.0%} fallback"
    return cell


def markdown_table(table) -> str:
    """`side_by_side`'s table as Markdown, one table per (profile, model): a row per method, a column per
    dataset, each cell "accuracy [95% CI] · mean output tokens (change vs vanilla CoT)", plus the total
    with the estimator's tokens and the fallback share where a method has them (`_cell`), "missing"
    where no run finished."""
    if "accuracy" not in table or table["accuracy"].isna().all():
        return "No finished evaluation runs yet: run notebooks 01-07 first."
    out = []
    for (profile, model), part in table.dropna(subset=["model"]).groupby(["profile", "model"], sort=True):
        datasets = list(dict.fromkeys(part["dataset"]))
        sizes = {d: sorted({int(n) for n in part.loc[part["dataset"] == d, "n"].dropna()}) for d in datasets}
        heads = [f"{d} (n={'/'.join(map(str, sizes[d])) or '?'})" for d in datasets]
        device = ", ".join(sorted(set(part["device"].dropna())))
        out += [f"**{model}** · profile {profile} · {device}", "",
                "| method | " + " | ".join(heads) + " |", "|---|" + "---|" * len(datasets)]
        by = {(r["dataset"], r["method"]): r for r in part.to_dict("records")}
        for method in sorted(set(part["method"]), key=_order):
            out.append(f"| {method} | " + " | ".join(_cell(by.get((d, method))) for d in datasets) + " |")
        out.append("")
    return "\n".join(out)


def replace_block(path: str | Path, name: str, text: str) -> bool:
    """Put `text` between the lines ``<!-- name:start -->`` and ``<!-- name:end -->`` of `path`
    (e.g. the README's results table); True when the file changed. Missing markers are an error."""
    path = Path(path)
    old = path.read_text()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if old.count(start) != 1 or old.count(end) != 1 or old.index(start) > old.index(end):
        raise ValueError(f"{path}: expected one '{start}' line before one '{end}' line")
    head, rest = old.split(start)
    new = f"{head}{start}\n{text.strip()}\n{end}{rest.split(end, 1)[1]}"
    if new != old:
        path.write_text(new)
    return new != old
