"""Figures, drawn with matplotlib's Agg backend (no display needed) and written atomically."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from common.io import atomic_path


def plot_loss(curve: Sequence[dict[str, float]], destination: str | Path, *, epochs: int,
              title: str = "") -> Path:
    """Loss against epoch, like the chapter's figure (its running mean, sampled 5x/epoch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(4.5, 3.2), dpi=120)
    axes.plot([p["epoch"] for p in curve], [p["loss"] for p in curve], label="train (running mean)")
    if any("interval_loss" in p for p in curve):
        axes.plot([p["epoch"] for p in curve], [p.get("interval_loss") for p in curve],
                  linestyle="--", alpha=0.7, label="train (since last point)")
    validation = [p for p in curve if "valid_loss" in p]
    if validation:
        axes.plot([p["epoch"] for p in validation], [p["valid_loss"] for p in validation],
                  marker="o", label="validation")
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss")
    axes.set_xlim(0, max(epochs, 1))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    if title:
        axes.set_title(title, fontsize=8)
    figure.tight_layout()
    with atomic_path(destination, suffix=".png") as temporary:
        figure.savefig(temporary, format="png")
    plt.close(figure)
    return Path(destination)
