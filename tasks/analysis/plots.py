"""Training plots for the parent run: the arms' loss curves on one chart."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402


def plot_loss_curves(histories: dict[str, list[dict]]):
    """Train loss (solid) and eval loss (markers) per arm against the optimizer step."""
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
    ax.set_title("Loss by arm (same mixture, steps and seed)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
