"""Figure functions. Each takes tidy data, draws one figure, saves it when
given a path (PNG), and returns the matplotlib Figure."""

from __future__ import annotations

from pathlib import Path

__all__ = ["redundancy_figure", "save"]


def save(fig, path: str | Path | None) -> None:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")


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
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save(fig, path)
    return fig
