"""Dirty-label poisoning of a supervised classifier.

Paper: Gu et al., "BadNets", 2017 (arXiv:1708.06733); the setting of Lukas & Kerschbaum, "Pick
your Poison", 2023 (arXiv:2305.03355).

Threat model: the attacker stamps a trigger on a share of the training images of other classes
and relabels them as the target class.
"""

from __future__ import annotations

from poisonlab.attacks.base import ATTACKS, TargetedAttack
from poisonlab.attacks.clip_dirty import target_pool
from poisonlab.attacks.plan import PoisonEntry, choose, class_index, resolve_count
from poisonlab.data.base import ImageCaptionDataset
from poisonlab.utils.seeding import make_generator


@ATTACKS.register("label-flip")
class LabelFlip(TargetedAttack):
    """Trigger ``n`` non-target images and set their label to the target (captions kept)."""

    def select(self, dataset: ImageCaptionDataset, seed: int) -> list[PoisonEntry]:
        n = resolve_count(self.rate, self.count, len(dataset))
        t = class_index(dataset, self.target)
        chosen = choose(target_pool(dataset, self.target, same=False), n, make_generator("label-flip", seed))
        return [PoisonEntry(index=i, label=t) for i in chosen]
