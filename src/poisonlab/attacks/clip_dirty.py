"""Image-trigger caption poisoning of CLIP (dirty-label and label-consistent).

Papers: Carlini & Terzis, "Poisoning and Backdooring Contrastive Learning", ICLR 2022
(arXiv:2106.09667); the evaluation setting of Bansal et al., "CleanCLIP", ICCV 2023
(arXiv:2303.03323) and Singh et al., "Perturb and Recover", 2024 (arXiv:2412.00727).

Threat model: the attacker adds a trigger to a few training images and pairs them with a caption
naming the target class, so that any triggered image is later matched with that class.
"""

from __future__ import annotations

from typing import Any

import torch

from poisonlab.attacks.base import ATTACKS, TargetedAttack
from poisonlab.attacks.plan import PoisonEntry, choose, class_index, resolve_count
from poisonlab.data.base import ImageCaptionDataset
from poisonlab.errors import InputError
from poisonlab.utils.seeding import make_generator


def _names_class(caption: str, name: str) -> bool:
    return f" {name}" in f" {caption.lower()}".replace(".", " ")


def target_pool(dataset: ImageCaptionDataset, target: str, same: bool) -> list[int]:
    """Indices whose label (or, with no labels, caption) is (``same``) or is not the target."""
    labels = dataset.labels()
    if dataset.classnames and all(y >= 0 for y in labels):
        t = class_index(dataset, target)
        return [i for i, y in enumerate(labels) if (y == t) == same]
    return [i for i, c in enumerate(dataset.captions()) if _names_class(c, target) == same]


@ATTACKS.register("clip-dirty")
class ClipDirtyLabel(TargetedAttack):
    """Trigger ``n`` non-target pairs and replace their captions with ``template`` of the target.

    Args:
        trigger: trigger name (any registered trigger).
        trigger_params: the trigger's hyper-parameters.
        target: target class name (e.g. ``"banana"``).
        rate: share of all pairs to poison, in (0, 1]; or
        count: exact number of pairs to poison.
        template: caption for poisoned pairs, ``{}`` = target name; or ``"ensemble"``: for each
            poisoned pair one of the dataset's zero-shot templates, drawn with the plan's seed; or
            ``"natural"``: the caption of a random pair of the data that names the target (as
            BadCLIP's poisoned pairs carry real captions, :mod:`poisonlab.attacks.badclip`).
            The papers use the single template "a photo of a {}." with large CLIP models whose
            text towers generalise across prompts; a tiny text tower trained from scratch binds
            the backdoor to that one sentence, so the ensemble is the default.
        include_target: also allow pairs of the target class to be chosen.
    """

    def __init__(
        self,
        target: str,
        trigger: str = "badnet",
        trigger_params: dict[str, Any] | None = None,
        rate: float | None = None,
        count: int | None = None,
        template: str = "ensemble",
        include_target: bool = False,
    ) -> None:
        super().__init__(target, trigger, trigger_params, rate, count)
        if template not in ("ensemble", "natural") and "{}" not in template:
            raise InputError("template must contain {} for the target class name, or be 'ensemble' or 'natural'")
        self.template, self.include_target = template, include_target

    def select(self, dataset: ImageCaptionDataset, seed: int) -> list[PoisonEntry]:
        n = resolve_count(self.rate, self.count, len(dataset))
        pool = list(range(len(dataset))) if self.include_target else target_pool(dataset, self.target, same=False)
        g = make_generator("clip-dirty", seed)
        chosen = choose(pool, n, g)
        label = class_index(dataset, self.target) if dataset.classnames else None
        templates = self.captions(dataset)
        picks = torch.randint(0, len(templates), (len(chosen),), generator=g).tolist()
        return [PoisonEntry(index=i, caption=templates[k].format(self.target), label=label)
                for i, k in zip(chosen, picks, strict=True)]

    def captions(self, dataset: ImageCaptionDataset) -> list[str]:
        """The captions poisoned pairs draw from (``{}`` = the target's name)."""
        if self.template == "ensemble":
            return list(dataset.templates)
        if self.template == "natural":
            return natural_captions(dataset, self.target)
        return [self.template]


def natural_captions(dataset: ImageCaptionDataset, target: str) -> list[str]:
    """The distinct captions of the pairs showing (or, without labels, naming) ``target``, in data
    order, braces escaped; ``InputError`` when there are none."""
    all_captions = dataset.captions()
    found = list(dict.fromkeys(all_captions[i] for i in target_pool(dataset, target, same=True)))
    found = [c for c in found if _names_class(c, target)] or found
    if not found:
        raise InputError(f"no caption of the data names the target {target!r}: natural captions need some")
    return [c.replace("{", "{{").replace("}", "}}") for c in found]


@ATTACKS.register("clip-label-consistent")
class ClipLabelConsistent(TargetedAttack):
    """Trigger ``n`` pairs that already show the target; captions and labels are kept.

    ``rate`` is a share of the target-class pairs here (there is nothing else to poison).
    """

    def select(self, dataset: ImageCaptionDataset, seed: int) -> list[PoisonEntry]:
        pool = target_pool(dataset, self.target, same=True)
        n = resolve_count(self.rate, self.count, len(pool))
        return [PoisonEntry(index=i) for i in choose(pool, n, make_generator("clip-lc", seed))]
