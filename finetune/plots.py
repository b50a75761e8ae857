"""Training curves as PNG (matplotlib without a display)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


SMOOTH_ABOVE = 200  # a series with more points than this (per-step training loss) is drawn faint, with its moving average


def moving_average(ys: list[float], window: int) -> list[float]:
    """The mean of each point and the (up to) `window - 1` points before it."""
    out, total = [], 0.0
    for i, y in enumerate(ys):
        total += y - (ys[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot_curves(series: dict[str, tuple[list[float], list[float]]], path: str | Path, *, title: str,
                xlabel: str = "step", ylabel: str = "loss") -> Path:
    """One line per named (xs, ys) series, saved to `path`. A long, noisy series is drawn faint
    with its moving average over 2% of its points on top, so the trend is what the eye reads."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, (xs, ys) in series.items():
        if len(xs) > SMOOTH_ABOVE:
            window = max(len(xs) // 50, 2)
            (raw,) = ax.plot(xs, ys, alpha=0.25, linewidth=0.8)
            ax.plot(xs, moving_average(ys, window), color=raw.get_color(), label=f"{name} (mean of {window} steps)")
        else:
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
