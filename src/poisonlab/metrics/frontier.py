"""Clean accuracy against ASR: the trade-off a cleaning defense makes, as one number per budget.

A defense run at several strengths (learning rates, epochs) traces points (CA, ASR). Comparing two
defenses "at similar clean accuracy" means: allow each at most ``k`` points of CA below the
suspect model and take the lowest ASR it reached within that allowance. This is the criterion
of the PAR paper's comparison (ASR with CA kept close to the poisoned model's), made explicit.
"""

from __future__ import annotations

from collections.abc import Iterable


def best_asr_within(points: Iterable[tuple[float, float]], suspect_ca: float, allowance: float) -> float | None:
    """Lowest ASR among ``(ca, asr)`` points with ``ca >= suspect_ca - allowance``; None if none qualifies."""
    kept = [asr for ca, asr in points if ca >= suspect_ca - allowance]
    return min(kept) if kept else None


def pareto_front(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both counts (higher CA and lower ASR), by falling CA."""
    front: list[tuple[float, float]] = []
    for ca, asr in sorted(points, key=lambda p: (-p[0], p[1])):
        if not front or asr < front[-1][1]:
            front.append((ca, asr))
    return front
