"""Studies: the parts of an experiment beside the CLIP grid, each a registered kind.

A spec (:mod:`poisonlab.bench.spec`) holds the CLIP attack x defense grid and a list of studies
(``studies:``, or a top-level block named after a study kind). A study kind is registered once in
:data:`STUDIES` and says everything the runner needs of it:

- ``family``: the model family it trains (``clip``, ``classifier``, ``encoder``);
- ``Spec``: its typed config (a pydantic model; unknown keys are errors);
- ``jobs()``: its work as independent cached jobs, which the runner schedules beside the grid;
- ``rank``: where its jobs go in the shared list (the longest chains first).

Its numbers go to the results store under :attr:`Study.experiment`; the report renders them with
the renderer registered for the kind in :mod:`poisonlab.report.studies`, or as plain tables when
there is none. Adding a study touches its own file only.

Example (the toy study of ``tests/test_studies.py``)::

    @STUDIES.register("toy")
    class Toy(Study):
        family = "clip"
        Spec = ToySpec

        def jobs(self):
            return [("toy", lambda: self.put("a", "none", {"score": self.spec.value}))]
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError

from poisonlab.bench.parallel import Job
from poisonlab.bench.store import StudyRow
from poisonlab.errors import InputError
from poisonlab.registry import Registry

STUDIES: Registry[Study] = Registry("study")


class Study:
    """One study of an experiment, built by the runner with its name and typed spec."""

    family: ClassVar[str]
    Spec: ClassVar[type[BaseModel]]
    rank: ClassVar[int] = 0
    """Jobs of studies of a higher rank come first (they hold the longest chains of stages)."""
    headline: ClassVar[tuple[str, ...]] = ()
    """The metrics of its results rows that ``report --check`` holds to expected ranges."""
    headline_points: ClassVar[tuple[str, ...]] = ()
    """The same for its points (a series' measurements: per dose, mean over the seeds)."""

    def __init__(self, runner: Any, name: str, spec: Any) -> None:
        self.runner, self.spec, self.name = runner, spec, name
        self.experiment = experiment_name(runner.spec.name, name)
        """The experiment name the store keeps this study's rows under."""

    @property
    def kind(self) -> str:
        """The name this study's kind is registered under."""
        return type(self).registered_name  # type: ignore[attr-defined,no-any-return]

    def table(self, part: str) -> str:
        """The experiment name of one more table of this study (``part``: e.g. ``detect``), recorded
        in the store as this study's."""
        name = experiment_name(self.experiment, part)
        self.runner.store.put_study(self.row(name))
        return name

    def row(self, experiment: str | None = None) -> StudyRow:
        """What the store's rows under ``experiment`` (default this study's) are."""
        return StudyRow(experiment or self.experiment, self.runner.spec.name, self.name, self.kind, self.family)

    def jobs(self) -> list[Job]:
        raise NotImplementedError

    def check(self) -> None:
        """Build once each method the study names (``InputError`` for an unknown name or a bad
        parameter), so that a typo stops the run before hours of training rather than after."""

    def put(self, attack: str, row: str, metrics: dict[str, float], seed: int = 0) -> None:
        """One row of this study's results (``row``: the defense, repair or measurement)."""
        self.runner.store.put(self.experiment, attack, row, metrics, seed)


def experiment_name(spec: str, study: str) -> str:
    """The store's experiment name of study ``study`` of spec ``spec`` (the store's ``studies`` table
    says what each such name is; nothing reads the name back)."""
    return f"{spec}/{study}"


def typed(kind: str, name: str, fields: dict[str, Any]) -> Any:
    """``fields`` validated as the spec of study kind ``kind``; ``InputError`` naming the study and
    the first bad field."""
    spec_class = STUDIES.get(kind).Spec  # type: ignore[attr-defined]
    try:
        return spec_class.model_validate(fields)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InputError(f"study {name!r} ({kind}): {where}: {first['msg']}") from None
