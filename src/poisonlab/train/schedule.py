"""Learning-rate schedules as multipliers of the base rate, registered by name."""

from __future__ import annotations

import math
from collections.abc import Callable

from poisonlab.registry import Registry

Schedule = Callable[[int, int, int], float]
SCHEDULES: Registry[Schedule] = Registry("schedule")


def _cosine(progress: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


@SCHEDULES.register("cosine")
def cosine(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 (open_clip's default)."""
    if step < warmup:
        return (step + 1) / warmup
    return _cosine((step - warmup) / max(1, total - warmup))


@SCHEDULES.register("constant")
def constant(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then constant."""
    return (step + 1) / warmup if step < warmup else 1.0


@SCHEDULES.register("two-phase")
def two_phase(step: int, total: int, warmup: int) -> float:
    """PAR's schedule: linear from 1 down to 0.1 over the first half, then cosine from 0.1 to ~0."""
    half = max(1, total // 2)
    if step < half:
        return 1.0 - 0.9 * step / half
    return 0.1 * _cosine((step - half) / max(1, total - half))


def multiplier(name: str, step: int, total: int, warmup: int) -> float:
    return SCHEDULES.get(name)(step, total, warmup)
