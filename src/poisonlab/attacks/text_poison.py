"""Text-modality poisoning of CLIP: Attacks I, II and III.

Paper: Yang et al., "Data Poisoning Attacks Against Multimodal Encoders", ICML 2023
(arXiv:2209.15266).

Threat model: the attacker wants captions about a source class A to retrieve images it chooses.
It replaces the *image* of a few pairs whose caption is about A; no trigger is involved.

- Attack I: every selected A-caption gets the same target image x*.
- Attack II: selected A-captions get images of a target class B (shuffled, cycled).
- Attack III: several goals A_i -> B_i at once, the budget split evenly between them.

The poison budget (``rate`` or ``count``) is counted in pairs of the whole dataset.
"""

from __future__ import annotations

import torch

from poisonlab.attacks.base import ATTACKS, Attack
from poisonlab.attacks.plan import PoisonEntry, choose, class_index, resolve_count
from poisonlab.data.base import ImageCaptionDataset
from poisonlab.errors import InputError
from poisonlab.utils.seeding import make_generator


def _class_members(dataset: ImageCaptionDataset, name: str) -> list[int]:
    if not dataset.classnames:
        raise InputError("text-modality attacks need a dataset with class labels")
    c = class_index(dataset, name)
    return [i for i, y in enumerate(dataset.labels()) if y == c]


def _label_goal(dataset: ImageCaptionDataset, source: str, target: str, n: int, g: torch.Generator) -> list[PoisonEntry]:
    """Attack II for one goal: ``n`` source pairs get target-class images, cycled in random order."""
    if class_index(dataset, source) == class_index(dataset, target):
        raise InputError(f"source and target class are the same ({source!r})")
    chosen = choose(_class_members(dataset, source), n, g)
    targets = _class_members(dataset, target)
    order = [targets[int(i)] for i in torch.randperm(len(targets), generator=g)]
    return [PoisonEntry(index=i, image_from=order[k % len(order)], triggered=False) for k, i in enumerate(chosen)]


class TextAttack(Attack):
    """What the three attacks share: no trigger, and retrieval goals to measure them by."""

    def retrieval_goals(self) -> list[tuple[str, str | None]]:
        """``(source class, target class)`` per goal; the target is ``None`` for one target image."""
        raise NotImplementedError


@ATTACKS.register("text-attack-1")
class TextSingleImage(TextAttack):
    """Attack I: A-captions paired with one target image.

    Args:
        source: class A whose captions are poisoned.
        target_index: index of the target image x*; ``None`` draws one image not of class A.
        rate / count: budget in pairs.
    """

    def __init__(self, source: str, target_index: int | None = None, rate: float | None = None, count: int | None = None) -> None:
        super().__init__(None)
        self.source, self.target_index, self.rate, self.count = source, target_index, rate, count
        resolve_count(rate, count, 1)

    def pick_target(self, dataset: ImageCaptionDataset, g: torch.Generator) -> int:
        if self.target_index is not None:
            if not 0 <= self.target_index < len(dataset):
                raise InputError(f"target_index {self.target_index} is outside the dataset (0..{len(dataset) - 1})")
            return self.target_index
        c = class_index(dataset, self.source)
        others = [i for i, y in enumerate(dataset.labels()) if y != c]
        return others[int(torch.randint(0, len(others), (1,), generator=g))]

    def retrieval_goals(self) -> list[tuple[str, str | None]]:
        return [(self.source, None)]

    def target_image(self, dataset: ImageCaptionDataset, seed: int) -> int:
        """Index of the target image x* the plan of ``seed`` uses (the same at every budget)."""
        return self.pick_target(dataset, make_generator("text-attack-1", seed))

    def select(self, dataset: ImageCaptionDataset, seed: int) -> list[PoisonEntry]:
        g = make_generator("text-attack-1", seed)
        n = resolve_count(self.rate, self.count, len(dataset))
        target = self.pick_target(dataset, g)
        pool = [i for i in _class_members(dataset, self.source) if i != target]
        return [PoisonEntry(index=i, image_from=target, triggered=False) for i in choose(pool, n, g)]


@ATTACKS.register("text-attack-2")
class TextSingleLabel(TextAttack):
    """Attack II: A-captions paired with images of class B; B's own pairs stay."""

    def __init__(self, source: str, target: str, rate: float | None = None, count: int | None = None) -> None:
        super().__init__(None)
        self.source, self.target, self.rate, self.count = source, target, rate, count
        resolve_count(rate, count, 1)

    def retrieval_goals(self) -> list[tuple[str, str | None]]:
        return [(self.source, self.target)]

    def select(self, dataset: ImageCaptionDataset, seed: int) -> list[PoisonEntry]:
        n = resolve_count(self.rate, self.count, len(dataset))
        return _label_goal(dataset, self.source, self.target, n, make_generator("text-attack-2", seed))


@ATTACKS.register("text-attack-3")
class TextMultiLabel(TextAttack):
    """Attack III: several goals ``"A:B"`` applied together; the budget is split evenly.

    Args:
        goals: list of ``"source:target"`` strings (or ``(source, target)`` pairs).
    """

    def __init__(self, goals: list[str] | list[tuple[str, str]], rate: float | None = None, count: int | None = None) -> None:
        super().__init__(None)
        parsed = [tuple(g.split(":", 1)) if isinstance(g, str) else tuple(g) for g in goals]
        if not parsed or any(len(p) != 2 for p in parsed):
            raise InputError("goals must be a non-empty list of 'source:target'")
        sources = [p[0] for p in parsed]
        if len(set(sources)) != len(sources):
            raise InputError("each source class may appear in one goal only")
        self.goals = [f"{a}:{b}" for a, b in parsed]
        self.rate, self.count = rate, count
        resolve_count(rate, count, 1)

    def retrieval_goals(self) -> list[tuple[str, str | None]]:
        return [(a, b) for a, b in (g.split(":", 1) for g in self.goals)]

    def select(self, dataset: ImageCaptionDataset, seed: int) -> list[PoisonEntry]:
        total = resolve_count(self.rate, self.count, len(dataset))
        g = make_generator("text-attack-3", seed)
        entries: list[PoisonEntry] = []
        for k, goal in enumerate(self.goals):
            a, b = goal.split(":", 1)
            n = total // len(self.goals) + (1 if k < total % len(self.goals) else 0)
            if n:
                entries += _label_goal(dataset, a, b, n, g)
        return entries
