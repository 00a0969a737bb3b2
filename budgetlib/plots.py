"""Figure functions. Each takes tidy data, draws one figure, saves it when
given a path (PNG), and returns the matplotlib Figure."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

__all__ = ["redundancy_figure", "elasticity_figure", "budget_histogram", "search_trace_figure", "frontier_figure",
           "estimate_scatter", "training_figure", "adherence_figure", "finish", "save", "figure_name", "caption"]


def save(fig, path: str | Path | None) -> None:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")


def figure_name(name: str, profile: str) -> str:
    """A figure's file name for a profile: the smoke profile's is `name` (what
    CI regenerates), other profiles' carry theirs, so a medium or full run
    never overwrites the smoke figures.

    >>> figure_name("01_token_redundancy.png", "smoke"), figure_name("01_token_redundancy.png", "medium")
    ('01_token_redundancy.png', '01_token_redundancy_medium.png')
    """
    if profile == "smoke":
        return name
    stem, dot, ext = name.rpartition(".")
    return f"{stem}_{profile}{dot}{ext}" if dot else f"{name}_{profile}"


def caption(what: str | None, model: str, profile: str, data, *, truncated: float | None = None) -> str:
    """Every figure's title: what it shows, the model, the profile, each dataset with its n and, for
    answers generated under a cap, the share cut at it. `data` maps names to question lists or counts.

    >>> caption("token redundancy", "SmolLM2-135M", "smoke", {"synthetic": [1, 2, 3], "gsm8k": 8}, truncated=0.125)
    'token redundancy · SmolLM2-135M · smoke · synthetic n=3, gsm8k n=8 · 12% cut at the token cap'
    """
    sizes = ", ".join(f"{name} n={n if isinstance(n, int) else len(n)}" for name, n in dict(data).items())
    parts = [what, model, profile, sizes, None if truncated is None else f"{truncated:.0%} cut at the token cap"]
    return " · ".join(p for p in parts if p)


def finish(fig, path: str | Path | None, title: str | None = None):
    """The common end of every figure function: the title, a tight layout,
    the PNG when given a path; returns the figure."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save(fig, path)
    return fig


def redundancy_figure(summary, path: str | Path | None = None, title: str | None = None):
    """Accuracy (with 95% Wilson intervals) and mean output tokens per method,
    grouped by dataset. `summary` has columns dataset, method, accuracy,
    accuracy_ci_low, accuracy_ci_high, mean_output_tokens (as from
    `evaluate.compare_methods`)."""
    import matplotlib.pyplot as plt
    import numpy as np

    datasets = list(dict.fromkeys(summary["dataset"]))
    methods = list(dict.fromkeys(summary["method"]))
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(datasets))
    fig, (ax_acc, ax_tok) = plt.subplots(1, 2, figsize=(11, 4))
    for j, method in enumerate(methods):
        rows = summary.set_index(["dataset", "method"])
        acc, low, high, tok = [], [], [], []
        for d in datasets:
            r = rows.loc[(d, method)] if (d, method) in rows.index else None
            acc.append(np.nan if r is None else r["accuracy"])
            low.append(0 if r is None else r["accuracy"] - r["accuracy_ci_low"])
            high.append(0 if r is None else r["accuracy_ci_high"] - r["accuracy"])
            tok.append(np.nan if r is None else r["mean_output_tokens"])
        pos = x - 0.4 + width * (j + 0.5)
        ax_acc.bar(pos, acc, width, yerr=[low, high], capsize=2, label=method)
        ax_tok.bar(pos, tok, width, label=method)
    for ax, label in ((ax_acc, "accuracy (95% Wilson CI)"), (ax_tok, "mean output tokens")):
        ax.set_xticks(x, datasets)
        ax.set_ylabel(label)
    ax_acc.set_ylim(0, 1)
    ax_tok.legend(fontsize=8, loc="upper left")
    return finish(fig, path, title)


def elasticity_figure(summary, path: str | Path | None = None, title: str | None = None):
    """Three panels over the stated budget (log scale): actual output tokens
    (mean and median) against the y = x line, accuracy, and the share of
    answers within budget. `summary` as from `elasticity.sweep_summary`, or a
    dict {label: summary} to compare prompt wordings of the same budget."""
    import matplotlib.pyplot as plt

    summaries = summary if isinstance(summary, dict) else {None: summary}
    fig, (ax_tok, ax_acc, ax_in) = plt.subplots(1, 3, figsize=(13, 3.8))
    for label, s in summaries.items():
        b, tag = s["budget"], "" if label is None else f" ({label})"
        ax_tok.plot(b, s["mean_output_tokens"], "o-", label=f"mean output tokens{tag}")
        ax_tok.plot(b, s["median_output_tokens"], "s--", label=f"median output tokens{tag}")
        ax_acc.plot(b, s["accuracy"], "o-", label=label)
        ax_in.plot(b, s["within_budget"], "o-", label=label)
    b = next(iter(summaries.values()))["budget"]
    ax_tok.plot(b, b, "k:", label="y = x (the stated budget)")
    ax_tok.set_ylabel("actual output tokens")
    ax_tok.set_yscale("log", base=2)
    ax_tok.legend(fontsize=8)
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_ylim(0, 1)
    ax_in.set_ylabel("share of answers within budget")
    ax_in.set_ylim(0, 1)
    if len(summaries) > 1:
        ax_acc.legend(fontsize=8)
    for ax in (ax_tok, ax_acc, ax_in):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("stated budget β (tokens)")
    return finish(fig, path, title)


def budget_histogram(frames: dict, path: str | Path | None = None, title: str | None = None):
    """Per dataset: histogram of optimal budgets next to vanilla CoT lengths,
    over the questions that have an optimal budget. `frames` maps a dataset
    name to `search.results_frame(...)`."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(frames), figsize=(4.2 * len(frames), 3.6), squeeze=False)
    for ax, (name, frame) in zip(axes[0], frames.items()):
        searched = frame[frame["optimal_budget"].notna()]
        ax.set_title(f"{name} ({len(searched)} searched of {len(frame)})", fontsize=9)
        if searched.empty:
            ax.text(0.5, 0.5, "no question had a correct\nvanilla answer", ha="center", va="center",
                    transform=ax.transAxes)
            continue
        top = max(searched["vanilla_tokens"].max(), 1)
        bins = np.linspace(0, top, 12)
        ax.hist(searched["vanilla_tokens"], bins=bins, alpha=0.6, label="vanilla CoT length β0")
        ax.hist(searched["optimal_budget"], bins=bins, alpha=0.6, label="optimal budget β*")
        ax.set_xlabel("tokens")
    axes[0][0].set_ylabel("questions")
    axes[0][0].legend(fontsize=8)
    return finish(fig, path, title)


def search_trace_figure(results, path: str | Path | None = None, title: str | None = None, max_lines: int = 12):
    """TALE's elasticity figure: per question (one line each), actual output
    tokens against search round (round 0 = vanilla CoT; each later round
    states a smaller budget). Hollow markers: infeasible candidates."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    shown = [r for r in results if r.trace][:max_lines]
    for r in shown:
        rounds = list(range(len(r.trace) + 1))
        tokens = [r.vanilla_tokens] + [s.output_tokens for s in r.trace]
        (line,) = ax.plot(rounds, tokens, "-", alpha=0.8)
        for k, s in enumerate(r.trace, start=1):
            ax.plot(k, s.output_tokens, "o", color=line.get_color(), fillstyle="full" if s.feasible else "none")
    ax.set_xlabel("search round (budget halves each round)")
    ax.set_ylabel("actual output tokens")
    if not shown:
        ax.text(0.5, 0.5, "no question was searched", ha="center", va="center", transform=ax.transAxes)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save(fig, path)
    return fig


def frontier_figure(frame, path: str | Path | None = None, title: str | None = None,
                     tokens: str = "mean_total_tokens"):
    """Accuracy against output tokens (answers + estimator by default), one
    point per (dataset, method) with its 95% interval; up-left is better.
    One colour and marker per method across all panels and one shared
    legend. Rows without a measured accuracy (missing methods in
    `results.side_by_side`) are not drawn; with nothing to draw, the figure
    says so instead of failing."""
    import matplotlib.pyplot as plt

    frame = frame[frame["accuracy"].notna() & frame[tokens].notna()] if len(frame) else frame
    datasets = sorted(set(frame["dataset"])) if len(frame) else []
    methods = list(dict.fromkeys(frame["method"])) if len(frame) else []
    colours = plt.get_cmap("tab20").colors
    markers = "osD^vP*Xh<>p"
    fig, axes = plt.subplots(1, max(len(datasets), 1), figsize=(4.8 * max(len(datasets), 1), 4.2), squeeze=False)
    for ax, d in zip(axes[0], datasets):
        rows = frame[frame["dataset"] == d]
        for j, m in enumerate(methods):
            for r in rows[rows["method"] == m].itertuples():
                ax.errorbar(getattr(r, tokens), r.accuracy, yerr=[[r.accuracy - r.accuracy_ci_low],
                                                                 [r.accuracy_ci_high - r.accuracy]],
                            fmt=markers[j % len(markers)], color=colours[j % len(colours)], capsize=2,
                            label=m)
        ax.set_title(f"{d} (n = {int(rows['n'].max())})", fontsize=10)
        ax.set_xlabel("mean output tokens (answer + estimator)")
        ax.set_ylim(-0.03, 1.03)  # points at 0 and 1 stay visible
    if not datasets:
        axes[0][0].text(0.5, 0.5, "no finished evaluation runs yet", ha="center", va="center")
    axes[0][0].set_ylabel("accuracy (95% Wilson CI)")
    handles = {}
    for ax in axes[0]:
        handles.update(zip(*reversed(ax.get_legend_handles_labels())))
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    return finish(fig, path, title)


def estimate_scatter(frame, path: str | Path | None = None, title: str | None = None, estimators=None):
    """Estimated budget against the searched label (log-log, y = x line);
    `frame` as from `estimators.cross_validate`."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.2))
    estimators = estimators or [c for c in frame.columns if c not in ("id", "label", "label_lo", "label_hi")]
    for name in estimators:
        if name in frame and frame[name].notna().any():
            valid = frame[frame[name].notna()]
            ax.scatter(valid["label"], valid[name].astype(float), label=name, alpha=0.75)
    values = [v for c in ("label",) + tuple(e for e in estimators if e in frame)
              for v in frame[c].dropna().astype(float)]
    lo, hi = max(min(values), 1), max(values)
    ax.plot([lo, hi], [lo, hi], "k:", label="y = x")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("searched budget (label)")
    ax.set_ylabel("estimated budget")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save(fig, path)
    return fig


def training_figure(histories: dict, path: str | Path | None = None, title: str | None = None,
                    keys: Sequence[str] = ("loss",)):
    """One panel per logged value in `keys` (e.g. ``"loss"``, DPO's
    ``"rewards/margins"``, GRPO's ``"reward"``), per step, one line per run
    (`histories`: name -> trl log_history)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, history in histories.items():
            rows = [h for h in history if key in h and "step" in h]
            ax.plot([h["step"] for h in rows], [float(h[key]) for h in rows], "o-", label=name)
        ax.set_ylabel("training loss" if key == "loss" else key)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    return finish(fig, path, title)


def adherence_figure(sweeps: dict, own: dict, path: str | Path | None = None, title: str | None = None):
    """SelfBudgeter budget adherence. Left: user-preset budget N against the
    mean actual output length, one line per model (`sweeps`: name -> frame
    with ``preset`` and ``mean_output_tokens``), and y = x. Right: the
    model's own stated budget against its actual length, per question
    (`own`: name -> rows with ``budget`` and ``n_output_tokens``)."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    top = 1
    for name, frame in sweeps.items():
        left.plot(frame["preset"], frame["mean_output_tokens"], "o-", label=name)
        top = max(top, frame["preset"].max(), frame["mean_output_tokens"].max())
    left.plot([0, top], [0, top], "k:", label="actual = preset")
    left.set(xlabel="preset budget N (prefilled)", ylabel="mean actual output tokens")
    top = 1
    for name, rows in own.items():
        stated = [(r["budget"], r["n_output_tokens"]) for r in rows if r["budget"]]
        if stated:
            right.scatter(*zip(*stated), s=14, alpha=0.7, label=f"{name} ({len(stated)}/{len(rows)} stated)")
            top = max(top, *(max(x) for x in zip(*stated)))
    right.plot([0, top], [0, top], "k:", label="actual = stated")
    right.set(xlabel="budget the model stated", ylabel="actual output tokens")
    for ax in (left, right):
        ax.legend(fontsize=8)
    return finish(fig, path, title)
