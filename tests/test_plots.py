"""Training-curve plots: the moving average drawn over long, noisy series."""
from __future__ import annotations

import pytest

from finetune.plots import SMOOTH_ABOVE, moving_average, plot_curves


def test_moving_average_uses_the_points_so_far_then_a_full_window():
    assert moving_average([2.0, 4.0, 6.0, 8.0], 2) == pytest.approx([2.0, 3.0, 5.0, 7.0])
    assert moving_average([1.0, 2.0, 3.0], 10) == pytest.approx([1.0, 1.5, 2.0])


def test_long_series_is_smoothed_and_saved(tmp_path):
    xs = list(range(SMOOTH_ABOVE * 3))
    ys = [3.0 + (1 if i % 2 else -1) for i in xs]  # noisy around 3
    path = plot_curves({"train": (xs, ys), "validation": ([0, 300, 599], [3.5, 3.1, 3.0])}, tmp_path / "p" / "loss.png",
                       title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert moving_average(ys, len(xs) // 50)[-1] == pytest.approx(3.0)
