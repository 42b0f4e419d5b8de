"""Experiment specs: YAML files validated strictly (unknown keys are errors).

A spec is the CLIP attack x defense grid (``pretrain``, ``poison``, ``attacks``, ``cleaning``,
``defenses``, ``detectors``, ``test``) and a list of studies: each entry of ``studies:`` names a
registered study kind (:mod:`poisonlab.bench.study`) and gives that kind's fields; a top-level block
named after a kind is the same as a study of that kind and name::

    studies:
      - {study: ssl, name: ssl-moco, method: moco, ...}
    classifier: {...}        # = {study: classifier, name: classifier, ...}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import yaml
from pydantic import ConfigDict, Field, ValidationError, model_validator

from poisonlab.bench import studies  # noqa: F401  (registers the built-in study kinds)
from poisonlab.bench.config import (
    AttackSpec,
    Count,
    DataName,
    DefenseSpec,
    Name,
    Named,
    Seed,
    Strict,
    TrainSpec,
)
from poisonlab.bench.study import typed
from poisonlab.errors import InputError

PRESETS = Path(__file__).resolve().parent.parent / "presets"
SPEC_BYTES = 1 << 20
GRID = "grid"
"""The part name of the CLIP grid (no study may take it)."""


class PretrainSpec(TrainSpec):
    """The grid's clean model: one model (its cells take their seeds from ``poison.seeds``)."""

    model: Name = "poisonlab-tiny-rn"
    seeds: list[Seed] = Field(default_factory=list, max_length=0)


class PoisonSpec(TrainSpec):
    target: Name
    rate: float = Field(gt=0, le=1)


class DetectorSpec(Strict):
    """A poisoned-pair detector of the grid (``kdist``, ``slof``, ``dao``).

    It scores each poisoned fine-tuning set with the model fine-tuned on it, its threshold the
    ``1 - fpr`` quantile of the scores of ``clean_n`` clean pairs (generated with the cleaning
    data's seed, never the poison labels). ``retrain``: fine-tune the clean pre-trained model again,
    with the same budget and seed, on the pairs it keeps (detect, drop, retrain).
    """

    name: Name
    detector: Name
    params: dict[str, Any] = Field(default_factory=dict)
    clean_n: Count = 1000
    retrain: bool = False


class CleaningSpec(Strict):
    n: Count
    data_seed: Seed = 2


class TestSpec(Strict):
    n: Count = 2000
    data_seed: Seed = 0


class StudyEntry(Strict):
    """One study of a spec: its name (unique in the spec; its stages and store rows carry it), its
    registered kind and that kind's fields (typed by :func:`study_specs`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())
    name: Name
    study: Name
    fields: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _inline(cls, data: Any) -> Any:
        """``{study: KIND, name: NAME, ...fields}`` (the YAML form; ``name`` defaults to the kind)."""
        if not isinstance(data, dict) or "fields" in data:
            return data
        rest = {k: v for k, v in data.items() if k not in ("name", "study")}
        return {"name": data.get("name", data.get("study")), "study": data.get("study"), "fields": rest}


class TypedStudy(NamedTuple):
    """A study of a spec with its typed config."""

    name: str
    kind: str
    spec: Any


class ExperimentSpec(Strict):
    """The CLIP attack x defense grid and the experiment's studies."""

    name: Name
    dataset: DataName = "shapes"
    image_size: int = Field(default=32, ge=8, le=1024)
    pretrain: PretrainSpec
    poison: PoisonSpec
    attacks: Named[AttackSpec]
    cleaning: CleaningSpec
    defenses: Named[DefenseSpec]
    test: TestSpec = TestSpec()
    detectors: Named[DetectorSpec] = Field(default_factory=list)
    studies: Named[StudyEntry] = Field(default_factory=list, max_length=64)

    @model_validator(mode="before")
    @classmethod
    def _blocks(cls, data: Any) -> Any:
        """Each top-level block that is not a field of the grid becomes a study of that kind and name."""
        if not isinstance(data, dict):
            return data
        blocks = {k: v for k, v in data.items() if k not in cls.model_fields}
        if not blocks:
            return data
        entries = list(data.get("studies") or [])
        for key, block in blocks.items():
            if not isinstance(block, dict):
                raise ValueError(f"{key}: a study block must be a mapping")
            entries.append({"study": key, "name": key, **block})
        return {**{k: v for k, v in data.items() if k not in blocks}, "studies": entries}

    @model_validator(mode="after")
    def _reserved(self) -> ExperimentSpec:
        if any(s.name == GRID for s in self.studies):
            raise ValueError(f"study name {GRID!r} is reserved for the CLIP grid")
        return self


def study_specs(spec: ExperimentSpec) -> list[TypedStudy]:
    """The spec's studies, each typed by its kind's config (``InputError`` naming the first bad one)."""
    return [TypedStudy(s.name, s.study, typed(s.study, s.name, s.fields)) for s in spec.studies]


def with_seeds(spec: ExperimentSpec, seeds: list[int]) -> ExperimentSpec:
    """``spec`` with ``seeds`` added to the training seeds of the grid's poisoned fine-tunes and of
    every study whose config has ``with_seeds`` (each kind says what that means)."""
    if not seeds:
        return spec
    entries = [e.model_copy(update={"fields": s.spec.with_seeds(seeds).model_dump(mode="json")})
               if hasattr(s.spec, "with_seeds") else e for e, s in zip(spec.studies, study_specs(spec), strict=True)]
    return spec.model_copy(update={"poison": spec.poison.with_seeds(seeds), "studies": entries})


def load_spec(path_or_preset: str | Path) -> ExperimentSpec:
    """Read a spec file, or a bundled preset by name (``demo``); ``InputError`` if invalid."""
    path = Path(path_or_preset)
    if not path.exists():
        path = PRESETS / f"{path_or_preset}.yaml"
    if not path.is_file():
        presets = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml") if not p.stem.endswith(".expected")))
        raise InputError(f"no spec file {path_or_preset!r} (bundled presets: {presets})")
    if path.stat().st_size > SPEC_BYTES:
        raise InputError(f"{path}: {path.stat().st_size} bytes is too large for a spec (at most {SPEC_BYTES})")
    try:
        spec = ExperimentSpec.model_validate(yaml.safe_load(path.read_bytes().decode("utf-8")))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InputError(f"{path}: {where}: {first['msg']}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a spec (not UTF-8 text)") from None
    except (yaml.YAMLError, RecursionError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{path}: not valid YAML ({msg})") from None
    try:
        study_specs(spec)
    except InputError as err:
        raise InputError(f"{path}: {err}") from None
    return spec
