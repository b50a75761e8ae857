"""Training curves as PNG (matplotlib without a display)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(series: dict[str, tuple[list[float], list[float]]], path: str | Path, *, title: str,
                xlabel: str = "step", ylabel: str = "loss") -> Path:
    """One line per named (xs, ys) series, saved to `path`."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, label=name, marker="o" if len(xs) < 30 else None, markersize=3)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
