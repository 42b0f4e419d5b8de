"""The results store: one SQLite file.

Every row says what it is; nothing is packed into names and parsed back:

- ``results``: one row per (experiment, attack, defense, seed, metric): a final model's numbers,
  one row per training seed of the cell.
- ``points``: measurements along an axis, one row per (experiment, attack, condition, dose, seed,
  metric): a dose-response series over training seeds (dose = poisoned pairs), or a repair's
  path (dose = tuning steps).
- ``documents``: one JSON document per (experiment, name) for results that are not a table
  (the detection population's ROC curves).
- ``stages``: each stage's cache key, seconds and whether it came from the cache.
- ``studies``: what each experiment name of the other tables is: the spec it ran in, the study
  of that spec (``grid`` for the CLIP grid), the study's registered kind and model family.
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from statistics import fmean, stdev
from typing import Any, NamedTuple
from urllib.parse import quote

from poisonlab.errors import InputError

CLEAN_MODEL = "clean model"
"""The row of a model never poisoned (what a trigger does without a backdoor: the floor of its ASR)."""
UNDEFENDED = "none"
"""The row of the poisoned model before any defense."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    experiment TEXT NOT NULL, attack TEXT NOT NULL, defense TEXT NOT NULL, seed INTEGER NOT NULL,
    metric TEXT NOT NULL, value REAL, PRIMARY KEY (experiment, attack, defense, seed, metric));
CREATE TABLE IF NOT EXISTS stages (
    experiment TEXT NOT NULL, stage TEXT NOT NULL, key TEXT NOT NULL, seconds REAL, cached INTEGER,
    PRIMARY KEY (experiment, stage));
CREATE TABLE IF NOT EXISTS points (
    experiment TEXT NOT NULL, attack TEXT NOT NULL, condition TEXT NOT NULL, dose REAL NOT NULL,
    seed INTEGER NOT NULL, metric TEXT NOT NULL, value REAL,
    PRIMARY KEY (experiment, attack, condition, dose, seed, metric));
CREATE TABLE IF NOT EXISTS documents (
    experiment TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (experiment, name));
CREATE TABLE IF NOT EXISTS studies (
    experiment TEXT NOT NULL PRIMARY KEY, spec TEXT NOT NULL, study TEXT NOT NULL, kind TEXT NOT NULL,
    family TEXT NOT NULL);
"""


class Point(NamedTuple):
    """One measured model of a series: its attack, condition (defense, repair or 'none'), its
    position on the series' axis (``dose``: poisoned pairs, or tuning steps) and training seed."""

    attack: str
    condition: str
    dose: float
    seed: int
    metrics: dict[str, float]


class StudyRow(NamedTuple):
    """What an experiment name of the store is (:meth:`ResultsStore.put_study`)."""

    experiment: str
    spec: str
    study: str
    kind: str
    family: str


class Spread(NamedTuple):
    """One number of a cell over its training seeds."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return fmean(self.values)

    @property
    def sd(self) -> float:
        """Sample standard deviation (0 for one seed)."""
        return stdev(self.values) if self.n > 1 else 0.0

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)


def _migrate(conn: sqlite3.Connection) -> None:
    """A results table written before rows had seeds: its rows become seed-0 rows."""
    columns = [row[1] for row in conn.execute("PRAGMA table_info(results)")]
    if columns and "seed" not in columns:
        with conn:
            conn.execute("ALTER TABLE results RENAME TO results_unseeded")
            conn.executescript(SCHEMA)
            conn.execute("INSERT INTO results SELECT experiment, attack, defense, 0, metric, value FROM results_unseeded")
            conn.execute("DROP TABLE results_unseeded")


def _check_ours(conn: sqlite3.Connection, path: Path) -> None:
    """``InputError`` unless every table in ``conn`` is one of the store's, with the store's columns
    (an empty file is a new store)."""
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for table in tables:
        columns = {r[1] for r in conn.execute(f"PRAGMA table_info('{table}')")} if table in COLUMNS else set()
        if not COLUMNS.get(table, {"?"}) <= columns:
            raise InputError(f"{path}: not a poisonlab results store (table {table!r} is not one of its tables); "
                             "poisonlab leaves it as it is")


COLUMNS = {"results": {"experiment", "attack", "defense", "metric", "value"},
           "stages": {"experiment", "stage", "key", "seconds", "cached"},
           "points": {"experiment", "attack", "condition", "dose", "seed", "metric", "value"},
           "documents": {"experiment", "name", "body"},
           "studies": {"experiment", "spec", "study", "kind", "family"}}


class ResultsStore:
    """Thin wrapper over ``sqlite3``; every write is its own committed transaction.

    Two processes may write at once (a parallel run): a writer waits up to
    ``timeout`` seconds for the other's transaction.
    """

    def __init__(self, path: str | Path, timeout: float = 60.0, read_only: bool = False) -> None:
        """Open (or, unless ``read_only``, create) the store at ``path``.

        ``read_only`` opens the file with SQLite's ``mode=ro`` and never writes to it (a store of
        an older layout is migrated in a copy in memory).

        Raises:
            InputError: ``path`` is not an SQLite file, or holds tables that are not poisonlab's.
        """
        path = Path(path)
        try:
            if read_only:
                source = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, timeout=timeout)
                _check_ours(source, path)
                self.conn = sqlite3.connect(":memory:")
                source.backup(self.conn)
                source.close()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.conn = sqlite3.connect(str(path), timeout=timeout)
                _check_ours(self.conn, path)
            _migrate(self.conn)
            self.conn.executescript(SCHEMA)
        except sqlite3.DatabaseError as err:
            raise InputError(f"{path}: not a poisonlab results store ({err})") from None

    def put(self, experiment: str, attack: str, defense: str, metrics: dict[str, float | None], seed: int = 0) -> None:
        """One cell's numbers for one training seed (``None``, a number without a value such as the
        precision of a filter that flagged nothing, is stored as NaN is: NULL)."""
        with self.conn:
            self.conn.executemany(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?)",
                [(experiment, attack, defense, int(seed), k, _number(v)) for k, v in metrics.items()],
            )

    def stage(self, experiment: str, stage: str, key: str, seconds: float | None, cached: bool) -> None:
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO stages VALUES (?, ?, ?, ?, ?)",
                              (experiment, stage, key, seconds, int(cached)))

    def put_point(self, experiment: str, attack: str, condition: str, dose: float, seed: int,
                  metrics: dict[str, float | None]) -> None:
        with self.conn:
            self.conn.executemany(
                "INSERT OR REPLACE INTO points VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(experiment, attack, condition, float(dose), int(seed), k, _number(v)) for k, v in metrics.items()],
            )

    def points(self, experiment: str) -> list[Point]:
        """Every point of ``experiment``, ordered by attack, condition, dose and seed."""
        rows = self.conn.execute("SELECT attack, condition, dose, seed, metric, value FROM points WHERE experiment = ? "
                                 "ORDER BY attack, condition, dose, seed", (experiment,))
        out: dict[tuple[str, str, float, int], dict[str, float]] = {}
        for attack, condition, dose, seed, metric, value in rows:
            out.setdefault((attack, condition, dose, seed), {})[metric] = math.nan if value is None else value
        return [Point(*key, metrics) for key, metrics in out.items()]

    def put_document(self, experiment: str, name: str, body: Any) -> None:
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO documents VALUES (?, ?, ?)",
                              (experiment, name, json.dumps(body, sort_keys=True)))

    def document(self, experiment: str, name: str) -> Any | None:
        """The JSON document stored as ``name``, or ``None``."""
        row = self.conn.execute("SELECT body FROM documents WHERE experiment = ? AND name = ?",
                                (experiment, name)).fetchone()
        return json.loads(row[0]) if row else None

    def documents(self, experiment: str, prefix: str = "") -> dict[str, Any]:
        """Every JSON document of ``experiment`` whose name starts with ``prefix``, by name."""
        rows = self.conn.execute("SELECT name, body FROM documents WHERE experiment = ? AND substr(name, 1, ?) = ? "
                                 "ORDER BY name", (experiment, len(prefix), prefix))
        return {name: json.loads(body) for name, body in rows}

    def table(self, experiment: str) -> dict[tuple[str, str], dict[str, float]]:
        """Each cell's numbers: the mean over its seeds (the value itself for one seed)."""
        return {cell: {m: None if math.isnan(s.mean) else s.mean for m, s in metrics.items()}  # type: ignore[misc]
                for cell, metrics in self.spread(experiment).items()}

    def spread(self, experiment: str) -> dict[tuple[str, str], dict[str, Spread]]:
        """Each cell's numbers over its training seeds (ordered by seed)."""
        rows = self.conn.execute("SELECT attack, defense, metric, value FROM results WHERE experiment = ? "
                                 "ORDER BY attack, defense, metric, seed", (experiment,))
        values: dict[tuple[str, str], dict[str, list[float]]] = {}
        for attack, defense, metric, value in rows:
            values.setdefault((attack, defense), {}).setdefault(metric, []).append(math.nan if value is None else value)
        return {cell: {m: Spread(tuple(v)) for m, v in metrics.items()} for cell, metrics in values.items()}

    def put_study(self, row: StudyRow) -> None:
        """Record what the rows of ``row.experiment`` are (their spec, study, kind and family)."""
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO studies VALUES (?, ?, ?, ?, ?)", tuple(row))

    def studies(self, spec: str) -> list[StudyRow]:
        """The experiment names of ``spec``'s studies, in the order they were recorded."""
        rows = self.conn.execute("SELECT * FROM studies WHERE spec = ? ORDER BY rowid", (spec,))
        return [StudyRow(*r) for r in rows]

    def experiments(self) -> list[str]:
        """The experiment names with any row, sorted (the ``studies`` table says what each is)."""
        rows = self.conn.execute("SELECT experiment FROM results UNION SELECT experiment FROM points ORDER BY 1")
        return [r[0] for r in rows]

    def stages(self, experiment: str) -> list[tuple[str, float | None, bool]]:
        rows = self.conn.execute("SELECT stage, seconds, cached FROM stages WHERE experiment = ? ORDER BY rowid",
                                 (experiment,))
        return [(s, sec, bool(c)) for s, sec, c in rows]

    def close(self) -> None:
        self.conn.close()


def _number(value: float | None) -> float | None:
    """A metric as the store keeps it: a float, or ``None`` (NULL) for a number without a value."""
    return None if value is None else float(value)
