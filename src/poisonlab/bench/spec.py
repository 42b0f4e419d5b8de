"""Experiment specs: YAML files validated strictly (unknown keys are errors)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from poisonlab.errors import InputError
from poisonlab.train.loop import TrainConfig

PRESETS = Path(__file__).resolve().parent.parent / "presets"


Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")]
"""A name from a spec that becomes part of a stage folder's name: letters, digits, ``. _ + -``."""
DataName = Annotated[str, Field(min_length=1, max_length=4096)]
"""An embedded dataset's name or a path to the user's data (only ever read)."""
Seed = Annotated[int, Field(ge=0, lt=2**63)]
Count = Annotated[int, Field(gt=0, le=10_000_000)]
"""Items of generated data (the memory it needs is checked again when it is made)."""
Dose = Annotated[int, Field(ge=0, le=10_000_000)]
SPEC_BYTES = 1 << 20


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Seeded(Strict):
    """Training seeds of a part of a spec.

    ``seed`` is the training seed (initialisation, order, which items an attack poisons);
    ``seeds`` are more training seeds: each stage that trains with this budget is also run with
    each of them, and the store keeps one row per seed (the report shows mean, sd and range).
    """

    seed: Seed = 0
    seeds: list[Seed] = Field(default_factory=list, max_length=64)

    def all_seeds(self) -> list[int]:
        """``seed`` first, then each other seed of ``seeds`` once."""
        return list(dict.fromkeys([self.seed, *self.seeds]))

    def tag(self, seed: int) -> str:
        """The stage-name suffix of a training seed (none for ``seed``, so its stages keep their names)."""
        return "" if seed == self.seed else f":seed{seed}"


class TrainSpec(Seeded):
    """A training budget on generated data (and its training seeds, :class:`Seeded`)."""

    n: Count
    data_seed: Seed = 0
    epochs: float = Field(gt=0, le=100_000)
    lr: float = Field(gt=0, le=100)
    batch_size: int = Field(default=128, gt=0, le=1 << 16)
    warmup: int = Field(default=0, ge=0, le=10_000_000)

    def budget(self, **dump: Any) -> dict[str, Any]:
        """The fields that make a stage's cache key (``seeds`` is not one: each seed is its own stage)."""
        return self.model_dump(exclude={"seeds", *dump.pop("exclude", ())}, **dump)

    def train_config(self, seed: int | None = None, **more: Any) -> TrainConfig:
        """The loop's config for this budget (``seed``: another training seed; ``more``: other fields)."""
        return TrainConfig(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, warmup=self.warmup,
                           seed=self.seed if seed is None else seed, **more)


class PretrainSpec(TrainSpec):
    """The grid's clean model: one model (its cells take their seeds from ``poison.seeds``)."""

    model: Name = "poisonlab-tiny-rn"
    seeds: list[Seed] = Field(default_factory=list, max_length=0)


class PoisonSpec(TrainSpec):
    target: Name
    rate: float = Field(gt=0, le=1)


class AttackSpec(Strict):
    """One attack of the grid; ``rate`` overrides the poison rate of its section for this attack.

    ``attack`` is a registered attack (default ``clip-dirty``), ``trigger`` and ``params`` its
    trigger and the trigger's parameters, ``attack_params`` the attack's own. An attack that
    makes its trigger on the clean model (BadCLIP) takes no ``trigger``.
    """

    name: Name
    trigger: Name | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    rate: float | None = Field(default=None, gt=0, le=1)
    attack: Name = "clip-dirty"
    attack_params: dict[str, Any] = Field(default_factory=dict)

    def poison_rate(self, section_rate: float) -> float:
        """This attack's poison rate: its own ``rate`` if set, else its section's."""
        return self.rate if self.rate is not None else section_rate


class DefenseSpec(Strict):
    name: Name
    defense: Name
    dataset: DataName = "shapes"
    params: dict[str, Any] = Field(default_factory=dict)


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


class RepairSpec(Strict):
    name: Name
    repair: Name
    params: dict[str, Any] = Field(default_factory=dict)


class PopulationSpec(Strict):
    n: int = Field(default=4, ge=2, le=1000)
    n_train: Count = 5000
    epochs: float = Field(default=8, gt=0, le=100_000)
    detectors: dict[Name, dict[str, Any]] = Field(default_factory=lambda: {"cti": {}, "neural-cleanse": {}})


class ClassifierSpec(TrainSpec):
    """Poisoned classifiers, their repair with a trusted share, and detection.

    ``detect`` scores the section's own clean and poisoned classifiers with each named detector
    (cheap: nothing new is trained); ``population`` trains ``n`` clean + ``n`` backdoored models
    and reports each of its detectors' ROC AUC. ``trace_every`` measures test CA / ASR along each
    repair every so many steps (the report's CA-vs-ASR curves; 0 turns it off).
    """

    model: Name = "poisonlab-resnet-tiny"
    target: Name
    rate: float = Field(gt=0, le=1)
    attacks: list[AttackSpec]
    trusted_share: float = Field(default=0.01, gt=0, le=1)
    trusted_seed: Seed = 5
    repairs: list[RepairSpec]
    trace_every: int = Field(default=50, ge=0)
    detect: dict[Name, dict[str, Any]] = Field(default_factory=dict)
    population: PopulationSpec | None = None


class SslSpec(TrainSpec):
    """SSL encoders: clean, patch-poisoned, distilled and PatchSearch-filtered; DECREE on two."""

    dataset: DataName = "shapes"
    method: Name = "moco"
    model: Name = "poisonlab-resnet-tiny"
    min_scale: float = Field(default=0.2, gt=0, le=1)
    test_n: Count | None = None
    target: Name
    rate: float = Field(default=0.5, gt=0, le=1)
    trigger: Name = "patch-image"
    trigger_params: dict[str, Any] = Field(default_factory=dict)
    probe_share: float = Field(default=0.1, gt=0, le=1)
    probe_seed: Seed = 7
    distill: dict[str, Any] = Field(default_factory=dict)
    distill_n: Count = 2500
    patchsearch: dict[str, Any] = Field(default_factory=dict)
    decree: dict[str, Any] = Field(default_factory=dict)


class TextAttackSpec(Strict):
    """One text-modality attack of the text section; ``counts`` overrides the section's doses."""

    name: Name
    attack: Name
    params: dict[str, Any] = Field(default_factory=dict)
    counts: list[Dose] | None = None

    def doses(self, section_counts: list[int]) -> list[int]:
        return self.counts if self.counts is not None else section_counts


class TextSpec(TrainSpec):
    """Text-modality poisoning (Yang et al.): dose-response of poisoned fine-tunes and the defenses.

    Each attack fine-tunes the grid's clean pre-trained model on ``n`` pairs with ``count`` of
    them poisoned, for every count (0: the same fine-tune on clean pairs). ``seed_counts`` are
    trained again with each of ``seeds`` (the attack's pair choice and the training order both
    follow the seed). At ``defend_count`` (default: each attack's largest count) the poisoned set
    is also filtered before training (``filter_fraction`` of the pairs least similar under the
    clean model dropped) and the poisoned model is cleaned by each of ``defenses``.
    """

    attacks: list[TextAttackSpec]
    counts: list[Dose] = Field(min_length=1)
    seed_counts: list[Dose] = Field(default_factory=list)
    defend_count: Dose | None = None
    filter_fraction: float = Field(default=0.1, gt=0, lt=1)
    defenses: list[DefenseSpec] = Field(default_factory=list)


class TrainingSpec(TrainSpec):
    """Training-time defenses against pre-training on poisoned pairs (SafeCLIP, RoCLIP).

    Every model is pre-trained from random weights with this budget (``n`` pairs of ``data_seed``)
    and each training seed: on the clean pairs (the reference), and per attack on the pairs
    poisoned at its ``rate`` (default the section's; target ``poison.target``) undefended, on the
    pairs the cosine filter keeps (scored by the clean model of the same seed, the trusted model
    the filter assumes; ``filter_fraction`` dropped, default twice the rate), and with each of
    ``defenses`` (registered training-time defenses and their parameters).
    """

    model: Name = "poisonlab-tiny-rn"
    attacks: list[AttackSpec] = Field(min_length=1)
    rate: float = Field(default=0.03, gt=0, le=1)
    defenses: list[DefenseSpec] = Field(default_factory=list)
    filter_fraction: float | None = Field(default=None, gt=0, lt=1)


class ExperimentSpec(Strict):
    """The attack x defense grid of the CLIP demo, plus optional classifier, SSL, text and
    training-time sections."""

    name: Name
    dataset: DataName = "shapes"
    image_size: int = Field(default=32, ge=8, le=1024)
    pretrain: PretrainSpec
    poison: PoisonSpec
    attacks: list[AttackSpec]
    cleaning: CleaningSpec
    defenses: list[DefenseSpec]
    test: TestSpec = TestSpec()
    classifier: ClassifierSpec | None = None
    ssl: SslSpec | None = None
    text: TextSpec | None = None
    training: TrainingSpec | None = None
    detectors: list[DetectorSpec] = Field(default_factory=list)


def with_seeds(spec: ExperimentSpec, seeds: list[int]) -> ExperimentSpec:
    """``spec`` with ``seeds`` added to the training seeds of the grid's poisoned fine-tunes and of
    every section (a text section without ``seed_counts`` seeds every dose)."""
    if not seeds:
        return spec

    def more(budget: Any) -> Any:
        return budget.model_copy(update={"seeds": list(dict.fromkeys([*budget.seeds, *seeds]))})

    update: dict[str, Any] = {"poison": more(spec.poison)}
    for part in ("classifier", "ssl", "training"):
        if getattr(spec, part) is not None:
            update[part] = more(getattr(spec, part))
    if spec.text is not None:
        text = more(spec.text)
        update["text"] = text if text.seed_counts else text.model_copy(update={"seed_counts": list(text.counts)})
    return spec.model_copy(update=update)


def seeded(method: DefenseSpec | RepairSpec, seed: int, base: int) -> Any:
    """A defense or repair spec run with training seed ``seed`` (:func:`seeded_params`)."""
    return method.model_copy(update={"params": seeded_params(method.params, seed, base)})


def seeded_params(params: dict[str, Any], seed: int, base: int) -> dict[str, Any]:
    """A method's params for training seed ``seed``: unchanged for the base seed or a fixed seed."""
    return params if seed == base or "seed" in params else {**params, "seed": seed}


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
        return ExperimentSpec.model_validate(yaml.safe_load(path.read_bytes().decode("utf-8")))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InputError(f"{path}: {where}: {first['msg']}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a spec (not UTF-8 text)") from None
    except (yaml.YAMLError, RecursionError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{path}: not valid YAML ({msg})") from None
