"""Seed spread in the report: mean ± sd cells, the range of each cell, and which orderings hold.

A cell trained with several seeds (``seeds`` of a spec's budget, :mod:`poisonlab.bench.spec`) has one
store row per seed. The report prints its mean ± sample sd, lists its range, flags a cell whose ASR
moves by more than :data:`UNSTABLE` between seeds, and states an ordering of two rows only when their
ranges over the seeds do not overlap.
"""

from __future__ import annotations

import math
from itertools import combinations

from poisonlab.bench.store import CLEAN_MODEL, Spread

UNSTABLE = 0.2  # an ASR-like rate whose seeds span more than this is reported as unstable


def success(metrics: dict[str, Spread] | dict[str, float | None]) -> str:
    """The attack's success metric in a row: Hit@10 for an attack on captions, else ASR."""
    return "hit@10" if "hit@10" in metrics else "asr"


def cell(s: Spread | None, scale: float = 100.0, digits: int = 1) -> str:
    """``mean`` for one seed, ``mean±sd`` for several, ``—`` when missing."""
    if s is None or any(math.isnan(v) for v in s.values):
        return "—"
    if s.n == 1:
        return f"{scale * s.mean:.{digits}f}"
    return f"{scale * s.mean:.{digits}f}±{scale * s.sd:.{digits}f}"


def span(s: Spread, scale: float = 100.0, digits: int = 1) -> str:
    """``[low, high]`` of the seeds."""
    return f"[{scale * s.low:.{digits}f}, {scale * s.high:.{digits}f}]"


def seeded_cells(table: dict[tuple[str, str], dict[str, Spread]]) -> dict[tuple[str, str], dict[str, Spread]]:
    """The cells with more than one seed."""
    return {k: m for k, m in table.items() if any(s.n > 1 for s in m.values())}


def spread_rows(table: dict[tuple[str, str], dict[str, Spread]], metrics: tuple[str, ...],
                unstable: str = "asr") -> list[list[str]]:
    """One row per cell with several seeds: each metric's mean ± sd and range, and whether the
    ``unstable`` metric spans more than :data:`UNSTABLE` over the seeds."""
    rows = [["cell", "seeds", *[f"{m} mean±sd [range]" for m in metrics], "stable?"]]
    for (attack, row), m in sorted(seeded_cells(table).items()):
        if not any(k in m for k in metrics):
            continue
        n = max(s.n for s in m.values())
        cells = [f"{cell(m[k])} {span(m[k])}" if k in m else "—" for k in metrics]
        s = m.get(unstable)
        verdict = "—" if s is None else ("**unstable**" if s.high - s.low > UNSTABLE else "stable")
        rows.append([f"{attack} / {row}", str(n), *cells, verdict])
    return rows


def ordering_rows(table: dict[tuple[str, str], dict[str, Spread]], attacks: list[str], conditions: list[str],
                  metric: str = "asr") -> list[list[str]]:
    """For each attack and each pair of ``conditions`` with several seeds: the ordering of their
    ``metric`` if their ranges over the seeds do not overlap, else 'overlap: no ordering'. The
    never-poisoned 'clean model' is the reference, not a contender: it is left out."""
    rows = [["attack", f"lower {metric}", f"higher {metric}", "seeds", "holds?"]]
    for attack in attacks:
        have = [(c, table[(attack, c)][metric]) for c in conditions if c != CLEAN_MODEL
                if metric in table.get((attack, c), {}) and table[(attack, c)][metric].n > 1]
        for (a, sa), (b, sb) in combinations(have, 2):
            lo, hi = ((a, sa), (b, sb)) if sa.mean <= sb.mean else ((b, sb), (a, sa))
            holds = lo[1].high < hi[1].low
            rows.append([attack, f"{lo[0]} {span(lo[1])}", f"{hi[0]} {span(hi[1])}", f"{min(sa.n, sb.n)}",
                         "yes, on every seed" if holds else "overlap: no ordering"])
    return rows
