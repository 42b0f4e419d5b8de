"""The pieces every part of an experiment spec is made of (the grid's and each study's).

Specs are validated strictly: unknown keys are errors, names that become parts of stage folders
are checked against :data:`Name`, numbers are bounded before anything is allocated.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from poisonlab import attacks, triggers
from poisonlab.attacks import TextAttack
from poisonlab.errors import InputError
from poisonlab.registry import parameters
from poisonlab.train.loop import TrainConfig

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")]
"""A name from a spec that becomes part of a stage folder's name: letters, digits, ``. _ + -``."""
DataName = Annotated[str, Field(min_length=1, max_length=4096)]
"""An embedded dataset's name or a path to the user's data (only ever read)."""
Seed = Annotated[int, Field(ge=0, lt=2**63)]
Count = Annotated[int, Field(gt=0, le=10_000_000)]
"""Items of generated data (the memory it needs is checked again when it is made)."""
Dose = Annotated[int, Field(ge=0, le=10_000_000)]


def _unique_names(items: list[Any]) -> list[Any]:
    names = [item.name for item in items]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        raise ValueError(f"the name {twice!r} is used twice (a name keys its stages and its results rows)")
    return items


T = TypeVar("T")
Named = Annotated[list[T], AfterValidator(_unique_names)]
"""A list of a spec's named parts (attacks, defenses, ...): two of one name would share stages and
overwrite each other's results, so a name used twice is an error."""


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

    def with_seeds(self, seeds: list[int]) -> Any:
        """This budget with ``seeds`` added to its training seeds."""
        return self.model_copy(update={"seeds": list(dict.fromkeys([*self.seeds, *seeds]))})


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


class AttackSpec(Strict):
    """One attack of the grid or a study; ``rate`` overrides the poison rate of its part for this attack.

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

    def build(self, target: str, rate: float) -> attacks.Attack:
        """The registered attack this names, toward ``target`` (when it takes one) at ``rate``, with
        its trigger; ``InputError`` when it takes a trigger and has none, or makes its own or poisons
        captions and is given one."""
        factory = attacks.ATTACKS.get(self.attack)
        params = {"rate": rate, **self.attack_params}
        if "target" in parameters(factory) and "target" not in params:
            params["target"] = target
        if getattr(factory, "needs_model", False) or is_text(factory):
            if self.trigger is not None:
                how = "poisons captions" if is_text(factory) else "makes its own trigger"
                raise InputError(f"attack {self.name!r}: {self.attack} {how}; give it no trigger")
        elif self.trigger is None:
            raise InputError(f"attack {self.name!r}: {self.attack} needs a trigger")
        else:
            params.update(trigger=self.trigger, trigger_params=self.params)
        return attacks.create(self.attack, **params)

    def check(self, target: str, rate: float) -> None:
        """Build the attack and its trigger once (``InputError`` for a wrong name or parameter)."""
        self.build(target, rate)
        if self.trigger is not None:
            triggers.create(self.trigger, **self.params)

    def poison_rate(self, default: float) -> float:
        """This attack's poison rate: its own ``rate`` if set, else ``default`` (its part's)."""
        return self.rate if self.rate is not None else default


class DefenseSpec(Strict):
    name: Name
    defense: Name
    dataset: DataName = "shapes"
    params: dict[str, Any] = Field(default_factory=dict)


class RepairSpec(Strict):
    name: Name
    repair: Name
    params: dict[str, Any] = Field(default_factory=dict)


def seeded(method: DefenseSpec | RepairSpec, seed: int, base: int) -> Any:
    """A defense or repair spec run with training seed ``seed`` (:func:`seeded_params`)."""
    return method.model_copy(update={"params": seeded_params(method.params, seed, base)})


def seeded_params(params: dict[str, Any], seed: int, base: int) -> dict[str, Any]:
    """A method's params for training seed ``seed``: unchanged for the base seed or a fixed seed."""
    return params if seed == base or "seed" in params else {**params, "seed": seed}


def is_text(factory: Any) -> bool:
    """Whether a registered attack poisons captions (no trigger; measured by Hit@K / MinRank)."""
    return isinstance(factory, type) and issubclass(factory, TextAttack)
