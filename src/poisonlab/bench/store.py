"""The results store: one SQLite file.

``results`` holds one row per (experiment, attack, defense, metric). ``points`` holds measurements
along an axis, one row per (experiment, attack, condition, dose, seed, metric): a dose-response
series measured over several training seeds.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import NamedTuple

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
"""


class Point(NamedTuple):
    """One measured model of a series: its attack, condition (defense or 'none'), dose and seed."""

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

    def table(self, experiment: str) -> dict[tuple[str, str], dict[str, float]]:
        rows = self.conn.execute("SELECT attack, defense, metric, value FROM results WHERE experiment = ?",
                                 (experiment,))
        out: dict[tuple[str, str], dict[str, float]] = {}
        for attack, defense, metric, value in rows:
            out.setdefault((attack, defense), {})[metric] = value
        return out

    def stages(self, experiment: str) -> list[tuple[str, float | None, bool]]:
        rows = self.conn.execute("SELECT stage, seconds, cached FROM stages WHERE experiment = ? ORDER BY rowid",
                                 (experiment,))
        return [(s, sec, bool(c)) for s, sec, c in rows]

    def close(self) -> None:
        self.conn.close()
