"""Attack base class and registry.

An attack is built with its hyper-parameters and called on a clean dataset with a seed; it
returns a :class:`~poisonlab.attacks.plan.PoisonPlan`. It never touches images itself: the plan
is applied lazily by :class:`~poisonlab.attacks.plan.PoisonedDataset`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from poisonlab.attacks.plan import PoisonEntry, PoisonPlan, resolve_count
from poisonlab.data.base import ImageCaptionDataset
from poisonlab.registry import Registry
from poisonlab.triggers import create as create_trigger

ATTACKS: Registry[Attack] = Registry("attack")


class Attack:
    """Base class: subclasses implement :meth:`select`."""

    needs_model: bool = False
    """Whether the attack makes its trigger on the clean model first (:meth:`prepare`)."""

    def __init__(self, trigger: str | None = None, trigger_params: dict[str, Any] | None = None) -> None:
        self.trigger_name = trigger
        self.trigger_params = dict(trigger_params or {})
        if trigger is not None:
            create_trigger(trigger, **self.trigger_params)  # validate now, not at read time

    def hyperparameters(self) -> dict[str, Any]:
        """The attack's own parameters, recorded in the plan."""
        return {k: v for k, v in vars(self).items() if k not in ("trigger_name", "trigger_params")}

    def select(self, dataset: ImageCaptionDataset, seed: int) -> list[PoisonEntry]:
        raise NotImplementedError

    def prepare(self, model: Any, dataset: ImageCaptionDataset, seed: int = 0) -> Any:
        """Make the trigger on the clean ``model`` before the plan of ``seed`` is drawn from
        ``dataset`` (attacks with ``needs_model``); the others have nothing to prepare."""
        return None

    def __call__(self, dataset: ImageCaptionDataset, seed: int = 0) -> PoisonPlan:
        """Make the plan for ``dataset`` with ``seed``."""
        entries = tuple(sorted(self.select(dataset, seed), key=lambda e: e.index))
        keys = dataset.keys()
        if keys is not None:
            entries = tuple(dataclasses.replace(e, key=keys[e.index]) for e in entries)
        trigger = {"name": self.trigger_name, "params": self.trigger_params} if self.trigger_name else None
        return PoisonPlan(
            attack=getattr(type(self), "registered_name", type(self).__name__),
            params=self.hyperparameters(),
            seed=int(seed),
            dataset=dataset.describe(),
            num_samples=len(dataset),
            trigger=trigger,
            entries=entries,
        )

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}(trigger={self.trigger_name!r}, {args})"


class TargetedAttack(Attack):
    """An image-trigger attack toward a target class with a budget (``rate`` or ``count``).

    ``default_rate`` is used when neither is given (``None``: one of them is required).
    """

    default_rate: float | None = None

    def __init__(
        self,
        target: str,
        trigger: str = "badnet",
        trigger_params: dict[str, Any] | None = None,
        rate: float | None = None,
        count: int | None = None,
    ) -> None:
        super().__init__(trigger, trigger_params)
        if rate is None and count is None:
            rate = self.default_rate
        self.target, self.rate, self.count = target, rate, count
        resolve_count(rate, count, 1)
