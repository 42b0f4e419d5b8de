"""Shared plotting pieces of the report: headless matplotlib (``plt``), attack panels, atomic PNG writes."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from poisonlab.bench.store import CLEAN_MODEL, UNDEFENDED
from poisonlab.utils.io import atomic_write  # noqa: E402

# Markers of the two reference models every CA-vs-ASR picture draws beside the defenses.
BASELINE_MARKERS = {UNDEFENDED: "x", CLEAN_MODEL: "*"}


def attack_panels(attacks: list[str]) -> tuple[Any, list[Any]]:
    """A figure with one CA-vs-ASR panel per attack (three per row); unused cells are hidden."""
    cols = min(3, len(attacks))
    rows = math.ceil(len(attacks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.5 * rows), squeeze=False)
    flat = list(axes.flat)
    for ax, attack in zip(flat, attacks, strict=False):
        ax.set_title(attack, fontsize=9)
        ax.set_xlabel("clean accuracy (%)", fontsize=8)
        ax.set_ylabel("ASR (%)", fontsize=8)
        ax.set_ylim(-5, 105)
        ax.grid(alpha=0.3)
    for ax in flat[len(attacks):]:
        ax.axis("off")
    return fig, flat[: len(attacks)]


def save_png(fig: Any, path: str | Path, **savefig: Any) -> Path:
    """Render ``fig`` in memory, close it, and write it to ``path`` atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, **savefig)
    plt.close(fig)
    path = Path(path)
    with atomic_write(path) as f:
        f.write(buf.getvalue())
    return path
