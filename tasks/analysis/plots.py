"""Plots for the parent run: the arms' loss curves, the learning-rate probes' curves, and
the suite scores with their bootstrap intervals."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402


def plot_loss_curves(histories: dict[str, list[dict]], title: str | None = None):
    """Train loss (solid) and eval loss (markers) per run against the optimizer step."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for i, (arm, history) in enumerate(sorted(histories.items())):
        color = f"C{i}"
        train = [(h["step"], h["loss"]) for h in history if "loss" in h]
        evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
        if train:
            ax.plot(*zip(*train, strict=True), color=color, label=f"{arm} train")
        if evals:
            ax.plot(*zip(*evals, strict=True), "o--", color=color, label=f"{arm} eval")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title or "Loss by arm (same mixture, steps and seed)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def _reference_bars(panel, suites: list[str], references: dict[str, dict[str, float]]) -> None:
    """A short vertical bar per suite row at its majority rate and at chance."""
    for name, color, style in (("majority", "black", "-"), ("chance", "grey", ":")):
        rows = [r for r, suite in enumerate(suites) if suite in references.get(name, {})]
        if rows:
            values = [references[name][suites[r]] for r in rows]
            lows, highs = [r - 0.45 for r in rows], [r + 0.45 for r in rows]
            panel.vlines(values, lows, highs, colors=color, linestyles=style, label=name)


def plot_suite_intervals(
    scores: dict[str, dict[str, tuple]],
    gains: dict[str, dict[str, tuple]],
    references: dict[str, dict[str, float]] | None = None,
):
    """Left: each model's score per suite (the seed mean) with its 95% interval, and what it
    is read against: the majority rate (a black bar) and chance (a grey one); right: each
    arm's gain over the base model per suite with the paired interval, and the zero line.

    `scores[model][suite]` and `gains[arm][suite]` are (estimate, low, high);
    `references["majority" | "chance"][suite]` a rate (multiple-choice suites only).
    """
    suites = list(next(iter(scores.values())))
    colors = {model: f"C{i}" for i, model in enumerate(scores)}  # a model's colour in both panels
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.6 * len(suites) + 2.2), dpi=110)
    for panel, data, title in (
        (left, scores, "score (95% interval)"),
        (right, gains, "gain over base (paired 95% interval)"),
    ):
        width = 0.8 / max(1, len(data))
        for i, (model, by_suite) in enumerate(data.items()):
            rows = [r + (i - (len(data) - 1) / 2) * width for r in range(len(suites))]
            est = [by_suite[s][0] for s in suites]
            err = [
                [by_suite[s][0] - by_suite[s][1] for s in suites],
                [by_suite[s][2] - by_suite[s][0] for s in suites],
            ]
            panel.errorbar(
                est, rows, xerr=err, fmt="o", capsize=3, color=colors[model], label=model
            )
        if panel is left:
            _reference_bars(panel, suites, references or {})
        panel.set_yticks(range(len(suites)), suites)
        panel.invert_yaxis()
        panel.set_title(title)
        panel.grid(alpha=0.3, axis="x")
        panel.legend(fontsize=8)
    right.axvline(0.0, color="black", linewidth=0.8)
    fig.tight_layout()
    return fig
