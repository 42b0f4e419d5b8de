"""The results store: one SQLite file.

Every row says what it is; nothing is packed into names and parsed back:

- ``results``: one row per (experiment, attack, defense, metric): a final model's numbers.
- ``points``: measurements along an axis, one row per (experiment, attack, condition, dose, seed,
  metric): a dose-response series over training seeds (dose = poisoned pairs), or a repair's
  path (dose = tuning steps).
- ``documents``: one JSON document per (experiment, name) for results that are not a table
  (the detection population's ROC curves).
- ``stages``: each stage's cache key, seconds and whether it came from the cache.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, NamedTuple

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    experiment TEXT NOT NULL, attack TEXT NOT NULL, defense TEXT NOT NULL,
    metric TEXT NOT NULL, value REAL, PRIMARY KEY (experiment, attack, defense, metric));
CREATE TABLE IF NOT EXISTS stages (
    experiment TEXT NOT NULL, stage TEXT NOT NULL, key TEXT NOT NULL, seconds REAL, cached INTEGER,
    PRIMARY KEY (experiment, stage));
CREATE TABLE IF NOT EXISTS points (
    experiment TEXT NOT NULL, attack TEXT NOT NULL, condition TEXT NOT NULL, dose REAL NOT NULL,
    seed INTEGER NOT NULL, metric TEXT NOT NULL, value REAL,
    PRIMARY KEY (experiment, attack, condition, dose, seed, metric));
CREATE TABLE IF NOT EXISTS documents (
    experiment TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (experiment, name));
"""


class Point(NamedTuple):
    """One measured model of a series: its attack, condition (defense, repair or 'none'), its
    position on the series' axis (``dose``: poisoned pairs, or tuning steps) and training seed."""

    attack: str
    condition: str
    dose: float
    seed: int
    metrics: dict[str, float]


class ResultsStore:
    """Thin wrapper over ``sqlite3``; every write is its own committed transaction.

    Two processes may write at once (the sections of a parallel run): a writer waits up to
    ``timeout`` seconds for the other's transaction.
    """

    def __init__(self, path: str | Path, timeout: float = 60.0) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(path), timeout=timeout)
        self.conn.executescript(SCHEMA)

    def put(self, experiment: str, attack: str, defense: str, metrics: dict[str, float]) -> None:
        with self.conn:
            self.conn.executemany(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?)",
                [(experiment, attack, defense, k, float(v)) for k, v in metrics.items()],
            )

    def stage(self, experiment: str, stage: str, key: str, seconds: float | None, cached: bool) -> None:
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO stages VALUES (?, ?, ?, ?, ?)",
                              (experiment, stage, key, seconds, int(cached)))

    def put_point(self, experiment: str, attack: str, condition: str, dose: float, seed: int,
                  metrics: dict[str, float]) -> None:
        with self.conn:
            self.conn.executemany(
                "INSERT OR REPLACE INTO points VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(experiment, attack, condition, float(dose), int(seed), k, float(v)) for k, v in metrics.items()],
            )

    def points(self, experiment: str) -> list[Point]:
        """Every point of ``experiment``, ordered by attack, condition, dose and seed."""
        rows = self.conn.execute("SELECT attack, condition, dose, seed, metric, value FROM points WHERE experiment = ? "
                                 "ORDER BY attack, condition, dose, seed", (experiment,))
        out: dict[tuple[str, str, float, int], dict[str, float]] = {}
        for attack, condition, dose, seed, metric, value in rows:
            out.setdefault((attack, condition, dose, seed), {})[metric] = value
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

    def table(self, experiment: str) -> dict[tuple[str, str], dict[str, float]]:
        rows = self.conn.execute("SELECT attack, defense, metric, value FROM results WHERE experiment = ?",
                                 (experiment,))
        out: dict[tuple[str, str], dict[str, float]] = {}
        for attack, defense, metric, value in rows:
            out.setdefault((attack, defense), {})[metric] = value
        return out

    def experiments(self) -> list[str]:
        """The experiments with any row, sorted (a spec's sections are ``NAME/section``)."""
        rows = self.conn.execute("SELECT experiment FROM results UNION SELECT experiment FROM points ORDER BY 1")
        return [r[0] for r in rows]

    def stages(self, experiment: str) -> list[tuple[str, float | None, bool]]:
        rows = self.conn.execute("SELECT stage, seconds, cached FROM stages WHERE experiment = ? ORDER BY rowid",
                                 (experiment,))
        return [(s, sec, bool(c)) for s, sec, c in rows]

    def close(self) -> None:
        self.conn.close()
