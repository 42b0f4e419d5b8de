"""CA-vs-ASR paths of the classifier repairs: how each one trades accuracy for robustness.

Pick your Poison (Lukas & Kerschbaum, 2023) compares repairs by their curves of clean accuracy
against ASR over the defense's strength; here the strength is the number of tuning steps. Each
path starts at the poisoned model, passes through the traced checkpoints of the repair and ends
with a ring on the model the repair returned (which differs from the last traced point when the
accuracy floor stopped it and restored earlier weights).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from poisonlab.bench.store import ResultsStore  # noqa: E402
from poisonlab.utils.io import atomic_write  # noqa: E402

Point = tuple[int, float, float]


def repair_paths(store: ResultsStore, experiment: str) -> dict[str, dict[str, list[Point]]]:
    """``{attack: {repair: [(step, ca, asr), ...]}}`` from the ``repair-trace`` rows, by step."""
    out: dict[str, dict[str, list[Point]]] = {}
    for (attack, key), m in store.table(f"{experiment}/repair-trace").items():
        repair, _, step = key.rpartition("@")
        out.setdefault(attack, {}).setdefault(repair, []).append((int(step), m["ca"], m["asr"]))
    for repairs in out.values():
        for points in repairs.values():
            points.sort()
    return out


def repair_curves(store: ResultsStore, experiment: str, attacks: list[str], repairs: list[str],
                  path: Path) -> Path | None:
    """One panel per attack; ``None`` (nothing written) when no repair was traced."""
    paths = repair_paths(store, experiment)
    if not paths:
        return None
    final = store.table(f"{experiment}/classifier")
    cols = min(3, len(attacks))
    fig, axes = plt.subplots(math.ceil(len(attacks) / cols), cols, figsize=(4.4 * cols, 3.6), squeeze=False)
    for ax, attack in zip(axes.flat, attacks, strict=False):
        start = final.get((attack, "none"))
        for i, repair in enumerate(repairs):
            colour = f"C{i}"
            pts = ([(0, start["ca"], start["asr"])] if start else []) + paths.get(attack, {}).get(repair, [])
            if pts:
                ax.plot([100 * p[1] for p in pts], [100 * p[2] for p in pts], "-o", ms=3, c=colour, label=repair)
            end = final.get((attack, repair))
            if end:
                ax.scatter(100 * end["ca"], 100 * end["asr"], s=90, facecolors="none", edgecolors=colour)
        for label, marker in (("none", "x"), ("clean model", "*")):
            m = final.get((attack, label))
            if m:
                ax.scatter(100 * m["ca"], 100 * m["asr"], marker=marker, s=60, c="k",
                           label="poisoned" if label == "none" else label)
        ax.set_title(attack, fontsize=9)
        ax.set_xlabel("clean accuracy (%)", fontsize=8)
        ax.set_ylabel("ASR (%)", fontsize=8)
        ax.set_ylim(-5, 105)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(attacks):]:
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    with atomic_write(path) as f:
        f.write(buf.getvalue())
    return path
