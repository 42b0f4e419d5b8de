"""Targeted patch poisoning of unlabeled data for self-supervised learning.

Paper: Saha et al., "Backdoor Attacks on Self-Supervised Learning", CVPR 2022 (arXiv:2105.10123).

Threat model: the attacker pastes an opaque patch on a share of the (unlabeled) images of one
target category; no label or caption changes. SSL then ties the patch to that category, so a
patched image of any class lands near the target in feature space.
"""

from __future__ import annotations

from typing import Any

from poisonlab.attacks.base import ATTACKS, TargetedAttack
from poisonlab.attacks.clip_dirty import target_pool
from poisonlab.attacks.plan import PoisonEntry, choose, resolve_count
from poisonlab.data.base import ImageCaptionDataset
from poisonlab.utils.seeding import make_generator


@ATTACKS.register("ssl-patch")
class SslTargetedPatch(TargetedAttack):
    """Patch ``rate`` of the target-class images (paper: 50%), labels and captions unchanged.

    The default trigger pastes the built-in patch with the paper's location rule: the top-left
    corner uniform in ``[0.25W, 0.75W - s] x [0.25H, 0.75H - s]``.
    """

    default_rate = 0.5

    def __init__(
        self,
        target: str,
        trigger: str = "patch-image",
        trigger_params: dict[str, Any] | None = None,
        rate: float | None = None,
        count: int | None = None,
    ) -> None:
        super().__init__(target, trigger, trigger_params, rate, count)

    def select(self, dataset: ImageCaptionDataset, seed: int) -> list[PoisonEntry]:
        pool = target_pool(dataset, self.target, same=True)
        n = resolve_count(self.rate, self.count, len(pool))
        return [PoisonEntry(index=i) for i in choose(pool, n, make_generator("ssl-patch", seed))]
