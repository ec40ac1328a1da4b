"""Chart setup shared by every report (builds, training, eval, score): matplotlib on its file-only
backend, and loss curves. Figures are written with `io.files.write_png` (atomic)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from agentflan.io.files import write_png

log = logging.getLogger(__name__)


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_curves(series: dict[str, list[tuple[int, float]]], path: Path, ylabel: str, title: str) -> Path | None:
    """Curves against the step (a legend when there are several), or None without matplotlib."""
    plt = pyplot()
    if plt is None:
        log.warning("matplotlib is not installed: no %s chart (pip install 'agentflan[report]')", title.lower())
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, points in series.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=name)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    return write_png(fig, path)
