"""Experiment specs: YAML files validated strictly (unknown keys are errors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from poisonlab.errors import InputError

PRESETS = Path(__file__).resolve().parent.parent / "presets"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainSpec(Strict):
    """A training budget on generated data."""

    n: int = Field(gt=0)
    data_seed: int = 0
    epochs: float = Field(gt=0)
    lr: float = Field(gt=0)
    batch_size: int = Field(default=128, gt=0)
    warmup: int = 0
    seed: int = 0


class PretrainSpec(TrainSpec):
    model: str = "poisonlab-tiny-rn"


class PoisonSpec(TrainSpec):
    target: str
    rate: float = Field(gt=0, le=1)


class AttackSpec(Strict):
    name: str
    trigger: str
    params: dict[str, Any] = Field(default_factory=dict)


class DefenseSpec(Strict):
    name: str
    defense: str
    dataset: str = "shapes"
    params: dict[str, Any] = Field(default_factory=dict)


class CleaningSpec(Strict):
    n: int = Field(gt=0)
    data_seed: int = 2


class TestSpec(Strict):
    n: int = Field(default=2000, gt=0)
    data_seed: int = 0


class ExperimentSpec(Strict):
    """The attack x defense grid of the CLIP demo."""

    name: str
    dataset: str = "shapes"
    image_size: int = 32
    pretrain: PretrainSpec
    poison: PoisonSpec
    attacks: list[AttackSpec]
    cleaning: CleaningSpec
    defenses: list[DefenseSpec]
    test: TestSpec = TestSpec()


def load_spec(path_or_preset: str | Path) -> ExperimentSpec:
    """Read a spec file, or a bundled preset by name (``demo``); ``InputError`` if invalid."""
    path = Path(path_or_preset)
    if not path.exists():
        path = PRESETS / f"{path_or_preset}.yaml"
    if not path.is_file():
        presets = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        raise InputError(f"no spec file {path_or_preset!r} (bundled presets: {presets})")
    try:
        return ExperimentSpec.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InputError(f"{path.name}: {where}: {first['msg']}") from None
    except yaml.YAMLError as err:
        raise InputError(f"{path.name}: not valid YAML ({err})") from None
