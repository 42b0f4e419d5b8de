"""Run an experiment spec: every part of it (the CLIP grid, :mod:`poisonlab.bench.grid`, and each
study, :mod:`poisonlab.bench.study`) as jobs of one list; every stage cached by the hash of what
produced it (:mod:`poisonlab.bench.cache`), the jobs scheduled by :mod:`poisonlab.bench.parallel`.

The runner holds what the parts share: the generated data, the test split, the clean pre-trained
model and the cleaning of a model by a defense on the spec's cleaning data. A stage whose output
folder already exists under ``OUT/cache/<stage>-<hash>`` is reused, so a second run only redoes
what changed.
"""

from __future__ import annotations

import functools
import logging
import shutil
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from poisonlab import defenses
from poisonlab.bench.cache import MODEL, StageCache
from poisonlab.bench.config import DefenseSpec
from poisonlab.bench.grid import ClipGrid
from poisonlab.bench.parallel import Job, jobs_beside
from poisonlab.bench.spec import GRID, ExperimentSpec, study_specs
from poisonlab.bench.store import ResultsStore
from poisonlab.bench.study import STUDIES, Study
from poisonlab.data import check_dataset, open_dataset
from poisonlab.defenses import RunOptions
from poisonlab.errors import InputError
from poisonlab.models import create_clip, load_clip
from poisonlab.train import train_clip
from poisonlab.utils.io import write_json
from poisonlab.utils.machine import describe
from poisonlab.utils.output import claim, claim_output, sweep

log = logging.getLogger(__name__)
RUN_OUTPUTS = ("results.db", "results.db-journal", "results.db-wal", "results.db-shm", "cache", "report", ".claims")
"""What a run writes into its output folder."""


class Runner:
    """Executes an :class:`ExperimentSpec` into ``out_dir`` (cache, results.db)."""

    def __init__(self, spec: ExperimentSpec, out_dir: str | Path, progress: bool = True,
                 run_id: str | None = None, only: Collection[str] | None = None, force: bool = False) -> None:
        """``only``: run just these parts of the spec (``grid`` or a study's name; default every
        part it has); ``force``: write into a non-empty ``out_dir`` that poisonlab did not write (only
        its own entries are replaced there). A killed run's temporary stage folders are swept."""
        self.spec, self.out, self.progress = spec, Path(out_dir), progress
        self.studies, self.parts = checked_parts(self, spec, only)
        self.run_id = run_id or uuid.uuid4().hex  # shared by the two processes of a parallel run
        marker = claim_output(self.out, RUN_OUTPUTS, force=force, legacy=("results.db",))
        if (self.out / "cache").is_dir() and run_id is None:
            sweep(self.out / "cache", marker)
        self.store = ResultsStore(self.out / "results.db")
        self.cache = StageCache(self.out, spec.name, self.run_id, self.store)
        self.keys = self.cache.keys
        self.processes = 1
        self._data: dict[tuple[str, int, int, str], Any] = {}

    def cached(self, stage: str, inputs: dict[str, Any], build: Callable[[Path], None]) -> Path:
        """The stage's output folder from the stage cache (:class:`~poisonlab.bench.cache.StageCache`)."""
        return self.cache(stage, inputs, build)

    # -- data ------------------------------------------------------------------------------
    def data(self, name: str, n: int, seed: int, split: str = "train") -> Any:
        """A generated dataset, made once per run (every attack and defense shares it)."""
        key = (name, n, seed, split)
        if key not in self._data:
            self._data[key] = open_dataset(name, split=split, size=self.spec.image_size, n=n, seed=seed)
        return self._data[key]

    def test(self) -> Any:
        return self.data(self.spec.dataset, self.spec.test.n, self.spec.test.data_seed, "test")

    # -- stages ----------------------------------------------------------------------------
    def pretrain(self) -> Path:
        p = self.spec.pretrain
        inputs = {"stage": "pretrain", "dataset": self.spec.dataset, "size": self.spec.image_size, **p.budget()}

        def build(tmp: Path) -> None:
            bundle = create_clip(p.model, seed=p.seed)
            config = p.train_config()
            train_clip(bundle, self.data(self.spec.dataset, p.n, p.data_seed), config, tmp, progress=self.progress)

        return self.cached("pretrain", inputs, build)

    def cleaned(self, stage: str, parent: str, defense: DefenseSpec, poisoned: Path) -> Path:
        """``poisoned`` (the output of the stage whose key is ``parent``) cleaned by ``defense`` on
        the experiment's cleaning data."""
        c = self.spec.cleaning
        inputs = {"stage": "clean", "parent": parent, "defense": defense.model_dump(), **c.model_dump()}

        def build(tmp: Path) -> None:
            method = defenses.create(defense.defense, family="clip", kind="cleaning", **defense.params)
            data = self.data(defense.dataset, c.n, c.data_seed)
            result = method.run(load_clip(poisoned / MODEL), data, out=tmp, options=RunOptions(progress=self.progress))
            write_json(tmp / "report.json", result.report)

        return self.cached(stage, inputs, build)

    def has_studies(self) -> bool:
        return bool(self.parts - {GRID})

    def all_jobs(self) -> list[Job]:
        """The jobs of every part that runs, studies of a higher ``rank`` (longer chains) first, the
        CLIP grid's last."""
        chosen = sorted((s for name, s in self.studies.items() if name in self.parts), key=lambda s: -s.rank)
        return [job for study in chosen for job in study.jobs()]

    def run_jobs(self, shared: bool = False, reverse: bool = False) -> None:
        """Run the jobs in order (``reverse``: last first).

        ``shared``: another process of this run works through the same list, so take only the jobs
        nobody has claimed yet. Every job computes the same numbers whichever process runs it
        (both processes have the same thread count).
        """
        jobs = self.all_jobs()
        for name, job in reversed(jobs) if reverse else jobs:
            if not shared or claim(self.out / ".claims" / self.run_id / name):
                log.info("job %s", name)
                job()

    def run(self, parallel: bool = False) -> dict[tuple[str, str], dict[str, float]]:
        """Run (or reuse) every stage of every part that runs; returns the grid's attack x defense table.

        ``parallel``: a second process works through the jobs from the first (the studies' longest
        chains) and this process through them from the last (the CLIP grid's), each with half the
        threads, until every job is claimed (:mod:`poisonlab.bench.parallel`); ignored with one thread
        or without a study beside the grid. Serial, the grid's jobs come first.
        """
        self.processes = 2 if parallel and self.has_studies() and torch.get_num_threads() >= 2 else 1
        threads = torch.get_num_threads() // self.processes
        self.store.put_document(self.spec.name, "machine", describe(self.processes, threads))
        for name in sorted(self.parts):
            self.store.put_study(self.studies[name].row())
        if self.processes == 2:
            try:
                with jobs_beside(functools.partial(shared_jobs, self.spec.model_dump_json(), str(self.out),
                                                   self.run_id, sorted(self.parts))):
                    self.run_jobs(shared=True, reverse=True)
            finally:
                shutil.rmtree(self.out / ".claims" / self.run_id, ignore_errors=True)
        else:
            self.run_jobs(reverse=True)
        return self.store.table(self.spec.name)

    @property
    def grid(self) -> ClipGrid:
        """The spec's CLIP grid (``InputError`` when it has no attacks)."""
        if GRID not in self.studies:
            raise InputError("the spec has no CLIP grid (no attacks)")
        return self.studies[GRID]  # type: ignore[return-value]


def checked_parts(runner: Any, spec: ExperimentSpec, only: Collection[str] | None) -> tuple[dict[str, Study], frozenset[str]]:
    """Every part of ``spec`` built for ``runner`` and the names of those to run (``only``: these),
    each checked (:meth:`Study.check`; ``InputError`` naming the part) before anything is written."""
    studies: dict[str, Study] = {GRID: ClipGrid(runner, spec)} if spec.attacks else {}
    studies |= {s.name: STUDIES.get(s.kind)(runner, s.name, s.spec)  # type: ignore[call-arg]
                for s in study_specs(spec)}
    missing = [p for p in only or () if p not in studies]
    if missing:
        raise InputError(f"the spec has no part {missing[0]!r} (it has: {', '.join(studies) or 'none'})")
    parts = frozenset(p for p in studies if only is None or p in only)
    check_dataset(spec.dataset)
    for part in sorted(parts):
        try:
            studies[part].check()
        except InputError as err:
            raise InputError(f"{part}: {err}") from None
    return studies, parts


@dataclass(frozen=True)
class Unopened:
    """What a study reads of its runner before a run opens its folder: the spec."""

    spec: ExperimentSpec


def dry_run(spec: ExperimentSpec, only: Collection[str] | None = None) -> dict[str, list[str]]:
    """The jobs each part of ``spec`` to run would run, every method, trigger and dataset checked
    first; nothing is trained and nothing is written."""
    studies, parts = checked_parts(Unopened(spec), spec, only)
    return {name: [job for job, _ in studies[name].jobs()] for name in sorted(parts)}


def shared_jobs(spec_json: str, out: str, run_id: str, parts: list[str]) -> None:
    """The second process of a parallel run: the jobs nobody has claimed yet."""
    Runner(ExperimentSpec.model_validate_json(spec_json), out, progress=False, run_id=run_id,
           only=parts).run_jobs(shared=True)
