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
    return save_figure(figure, destination)


def _pyplot():  # noqa: ANN202  (matplotlib's module)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, destination: str | Path) -> Path:  # noqa: ANN001
    """Lay out `figure`, write it as a PNG atomically (never half a file), close it."""
    plt = _pyplot()
    figure.tight_layout()
    with atomic_path(destination, suffix=".png") as temporary:
        figure.savefig(temporary, format="png")
    plt.close(figure)
    return Path(destination)


def plot_sweep(rows: Sequence[dict], destination: str | Path, *, title: str = "") -> Path:
    """One bar per sweep point (in the given order): validation loss and WordSim353 rho.

    The chapter's defaults are drawn in another colour, so that "how much better" is visible.
    """
    plt = _pyplot()
    names = [row["point"] + (" *" if row.get("chapter") else "") for row in rows]
    colours = ["tab:orange" if row.get("chapter") else "tab:blue" for row in rows]
    height = 1.2 + 0.28 * len(rows)
    figure, (loss_axes, rho_axes) = plt.subplots(1, 2, figsize=(9, height), dpi=120,
                                                 sharey=True)
    positions = range(len(rows))
    loss_axes.barh(positions, [row["valid_loss"] for row in rows], color=colours)
    rho_axes.barh(positions, [row["wordsim353"] for row in rows], color=colours)
    loss_axes.set_yticks(list(positions), names, fontsize=7)
    loss_axes.invert_yaxis()  # best (first) on top
    loss_axes.set_xlabel("validation loss (lower is better)")
    rho_axes.set_xlabel("WordSim353 Spearman rho (higher is better)")
    finite = [row["valid_loss"] for row in rows if row["valid_loss"] == row["valid_loss"]]
    if finite:  # bars that differ in the third digit: start the axis near the smallest
        loss_axes.set_xlim(min(finite) * 0.97, max(finite) * 1.01)
    else:
        loss_axes.text(0.5, 0.5, "no validation split", transform=loss_axes.transAxes,
                       ha="center", fontsize=8)
    for axes in (loss_axes, rho_axes):
        axes.grid(axis="x", alpha=0.3)
        axes.locator_params(axis="x", nbins=5)  # no tick labels running into the next panel
    if title:
        figure.suptitle(title, fontsize=8)
    return save_figure(figure, destination)


def plot_quality_vs_seconds(curves: dict[str, Sequence[Sequence[tuple[float, float]]]],
                            destination: str | Path, *, target: float | None = None,
                            budget: float | None = None, title: str = "") -> Path:
    """WordSim353 rho against cumulative training seconds: one colour per setting.

    `curves` maps a setting's label to its runs (one per seed), each a list of
    (seconds, rho) points, one per epoch end; `target` and `budget` draw the bar to reach
    (a rho within so many seconds) as dotted lines.
    """
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (label, runs) in enumerate(curves.items()):
        colour = colours[index % len(colours)]
        for number, points in enumerate(runs):
            axes.plot([0.0] + [s for s, _ in points], [0.0] + [r for _, r in points],
                      marker="o", markersize=3, color=colour, alpha=0.85,
                      label=label if number == 0 else None)
    if target is not None:
        axes.axhline(target, color="grey", linestyle=":", linewidth=1)
    if budget is not None:
        axes.axvline(budget, color="grey", linestyle=":", linewidth=1)
    axes.set_xlabel("training seconds (cumulative, at each epoch end)")
    axes.set_ylabel("WordSim353 Spearman rho")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="lower right")
    if title:
        axes.set_title(title, fontsize=8)
    return save_figure(figure, destination)
