"""Expected ranges: say when a run is off.

Each preset may ship ``presets/<name>.expected.yaml``: for its headline numbers, the interval they
were measured in (over training seeds, thread counts and machines), with the runs that measured it.
:func:`check` compares a results store against it; ``poisonlab report --check DIR`` prints the
numbers outside their ranges and exits 1 if there is any, and the report marks each number.

File format::

    preset: demo
    how: "[min, max] over the runs, widened by margin"
    margin: 0.03
    runs: [{command: ..., machine: ..., threads: ...}]
    numbers:
      - {experiment: demo, attack: badnet, row: none, metric: asr, range: [0.93, 0.99]}
      - {experiment: demo/text, attack: attack-2, row: none, dose: 300, metric: hit@10, range: [...]}

A number with ``dose`` is read from the store's points (mean over the seeds at that dose), the
others from its results table (``row``: the defense, repair or encoder row).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from poisonlab.bench.spec import GRID
from poisonlab.bench.store import ResultsStore, StudyRow
from poisonlab.bench.study import STUDIES
from poisonlab.errors import InputError
from poisonlab.utils.output import NAME


@dataclass(frozen=True)
class Expected:
    experiment: str
    attack: str
    row: str
    metric: str
    low: float
    high: float
    dose: float | None = None

    @property
    def label(self) -> str:
        at = f" @ {self.dose:g}" if self.dose is not None else ""
        return f"{self.experiment}: {self.attack} / {self.row}{at} / {self.metric}"


@dataclass(frozen=True)
class Finding:
    expected: Expected
    value: float | None  # None: the run has no such number
    not_run: bool = False  # the run holds nothing of the number's part (``run --only`` left it out)

    @property
    def inside(self) -> bool:
        return self.value is not None and self.expected.low <= self.value <= self.expected.high

    @property
    def off(self) -> bool:
        """Outside its range, or missing from a part the run did include."""
        return not self.inside and not self.not_run


def load_expected(path: str | Path) -> list[Expected]:
    """The numbers of an ``*.expected.yaml`` file; ``InputError`` naming the entry that is malformed."""
    try:
        body = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as err:
        raise InputError(f"{path}: cannot read expected ranges ({str(err).splitlines()[0][:200]})") from None
    if not isinstance(body, dict) or not isinstance(body.get("numbers"), list):
        raise InputError(f"{path}: expected a mapping with a 'numbers' list")
    if not body["numbers"]:
        raise InputError(f"{path}: the 'numbers' list is empty: a check against nothing would pass whatever the run says")
    out = []
    for i, item in enumerate(body["numbers"]):
        try:
            low, high = (float(v) for v in item["range"])
            dose = None if item.get("dose") is None else float(item["dose"])
            out.append(Expected(str(item["experiment"]), str(item["attack"]), str(item["row"]), str(item["metric"]),
                                low, high, dose))
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"{path}: numbers[{i}] needs experiment, attack, row, metric and range [low, high] "
                             f"({err})") from None
        if not low <= high:
            raise InputError(f"{path}: numbers[{i}] has range [{low}, {high}] with low > high")
    return out


def measured(store: ResultsStore, e: Expected) -> float | None:
    """The run's value of ``e`` (the seed mean for a point), or ``None`` when it has none."""
    if e.dose is None:
        value = store.table(e.experiment).get((e.attack, e.row), {}).get(e.metric)
    else:
        values = [p.metrics[e.metric] for p in store.points(e.experiment)
                  if p.attack == e.attack and p.condition == e.row and p.dose == e.dose and e.metric in p.metrics]
        value = sum(values) / len(values) if values else None
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def check(store: ResultsStore, expected: list[Expected]) -> list[Finding]:
    """Each expected number against the run; a number of a part the run holds nothing of (its
    experiment has no row at all) is marked not run rather than off."""
    parts = set(store.experiments())
    return [Finding(e, measured(store, e), e.experiment not in parts) for e in expected]


def expected_file(store: ResultsStore, presets: Path) -> Path | None:
    """``presets/<name>.expected.yaml`` of the experiment in ``store`` (``None`` if there is none)."""
    names = {e.split("/")[0] for e in store.experiments()}
    names = {n for n in names if NAME.match(n)}  # a name read from a store becomes a path only as a name
    found = [presets / f"{n}.expected.yaml" for n in sorted(names) if (presets / f"{n}.expected.yaml").is_file()]
    return found[0] if len(found) == 1 else None


def verdict_lines(findings: list[Finding]) -> list[str]:
    """One line per number outside its range (or missing), then the count."""
    lines = []
    for f in findings:
        if not f.off:
            continue
        e = f.expected
        got = "missing from this run" if f.value is None else f"{f.value:.4g}"
        lines.append(f"OFF  {e.label}: {got}, expected [{e.low:.4g}, {e.high:.4g}]")
    skipped = [f for f in findings if f.not_run]
    checked = len(findings) - len(skipped)
    off = sum(f.off for f in findings)
    lines.append(f"{checked - off} of {checked} numbers inside their expected ranges" + (f"; {off} off" if off else "")
                 + (f"; {len(skipped)} not checked: this run holds no "
                    f"{', '.join(sorted({f.expected.experiment for f in skipped}))}" if skipped else ""))
    return lines


def range_table(findings: list[Finding]) -> list[list[str]]:
    """The report's table: every checked number, its range and whether it is inside."""
    rows = [["number", "this run", "expected range", ""]]
    for f in findings:
        e = f.expected
        rows.append([e.label, "-" if f.value is None else f"{f.value:.4g}", f"[{e.low:.4g}, {e.high:.4g}]",
                     "in" if f.inside else "not run" if f.not_run else "**OFF**"])
    return rows


def as_dict(findings: list[Finding]) -> dict[str, Any]:
    return {"inside": sum(f.inside for f in findings), "total": sum(not f.not_run for f in findings),
            "not_run": sum(f.not_run for f in findings),
            "off": [{"number": f.expected.label, "value": f.value, "range": [f.expected.low, f.expected.high]}
                    for f in findings if f.off]}


GRID_HEADLINE = ("ca", "asr", "precision", "recall")
"""The CLIP grid's headline metrics (each study kind declares its own: ``Study.headline``)."""


def headline(store: ResultsStore, name: str) -> dict[Expected, float]:
    """The headline numbers of experiment ``name`` in ``store`` (ranges still empty), each the mean
    over its seeds: see :func:`headline_seeds`."""
    return {e: sum(v) / len(v) for e, v in headline_seeds(store, name).items()}


def legacy_parts(store: ResultsStore, name: str) -> list[StudyRow]:
    """The parts of a store written before it recorded them: the grid and each built-in study kind
    its experiment names end with."""
    found = [StudyRow(name, name, GRID, GRID, "clip")]
    for experiment in store.experiments():
        spec, _, study = experiment.partition("/")
        if spec == name and study in STUDIES:
            found.append(StudyRow(experiment, name, study, study, STUDIES.get(study).family))  # type: ignore[attr-defined]
    return found


def headline_seeds(store: ResultsStore, name: str) -> dict[Expected, list[float]]:
    """Each headline number of experiment ``name`` with its value on every training seed: the
    metrics each part's kind names (:data:`GRID_HEADLINE`, ``Study.headline``) of every results row
    and every point of the grid and the studies."""
    out: dict[Expected, list[float]] = {}
    for part in store.studies(name) or legacy_parts(store, name):
        kind = STUDIES.get(part.kind) if part.kind != GRID else None
        metrics = kind.headline if kind else GRID_HEADLINE  # type: ignore[attr-defined]
        for (attack, row), values in sorted(store.spread(part.experiment).items()):
            for metric in metrics:
                if metric in values and not any(math.isnan(v) for v in values[metric].values):
                    out[Expected(part.experiment, attack, row, metric, 0.0, 0.0)] = list(values[metric].values)
        for p in store.points(part.experiment):
            for metric in kind.headline_points if kind else ():  # type: ignore[attr-defined]
                if metric in p.metrics:
                    out.setdefault(Expected(part.experiment, p.attack, p.condition, metric, 0.0, 0.0, p.dose),
                                   []).append(p.metrics[metric])
    return out


def envelope(runs: list[dict[Expected, list[float]]], margin: float, min_runs: int = 2) -> list[Expected]:
    """For every number at least ``min_runs`` of ``runs`` have: ``[min, max]`` over those runs and
    their seeds, widened by ``margin`` (absolute for rates in [0, 1], clipped to [0, 1]; 10 x
    ``margin`` x the value, at least 1, for counts and ranks)."""
    out = []
    for key in dict.fromkeys(k for r in runs for k in r):
        have = [r[key] for r in runs if key in r]
        if len(have) < min(min_runs, len(runs)):
            continue
        values = [v for seeds in have for v in seeds]
        lo, hi = min(values), max(values)
        if key.metric in ("fp", "min_rank") or hi > 1:
            pad = max(1.0, margin * hi * 10)
            lo, hi = max(0.0, lo - pad), hi + pad
        else:
            lo, hi = max(0.0, lo - margin), min(1.0, hi + margin)
        out.append(Expected(key.experiment, key.attack, key.row, key.metric, round(lo, 4), round(hi, 4), key.dose))
    return out


def union(old: list[Expected], new: list[Expected]) -> list[Expected]:
    """Each number's range widened to hold both ``old``'s and ``new``'s (a number only one has is kept)."""
    def key(e: Expected) -> tuple[str, str, str, str, float | None]:
        return e.experiment, e.attack, e.row, e.metric, e.dose

    out = {key(e): e for e in old}
    for e in new:
        was = out.get(key(e))
        out[key(e)] = e if was is None else Expected(e.experiment, e.attack, e.row, e.metric, min(was.low, e.low),
                                                     max(was.high, e.high), e.dose)
    return list(out.values())


def write_expected(path: str | Path, preset: str, numbers: list[Expected], runs: list[dict[str, str]],
                   margin: float) -> None:
    """The expected-ranges file: a header (how, margin, runs) and one flow-style line per number."""
    head = {"preset": preset,
            "how": f"[min, max] of each number over the runs below that have it and their training seeds, widened by {margin} (rates, "
                   f"clipped to [0, 1]) or by {10 * margin:g} x the value, at least 1 (counts, ranks)",
            "margin": margin, "runs": runs}
    lines = [yaml.safe_dump(head, sort_keys=False, width=100).rstrip(), "numbers:"]
    for e in numbers:
        item = {"experiment": e.experiment, "attack": e.attack, "row": e.row, "metric": e.metric,
                **({"dose": e.dose} if e.dose is not None else {}), "range": [e.low, e.high]}
        lines.append("  - " + yaml.safe_dump(item, default_flow_style=True, sort_keys=False, width=200).strip())
    Path(path).write_text("\n".join(lines) + "\n")
