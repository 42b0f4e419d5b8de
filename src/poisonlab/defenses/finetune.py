"""Plain contrastive fine-tuning on clean pairs: the control every defense must beat.

Papers: used as the baseline in Bansal et al., "CleanCLIP", ICCV 2023 (arXiv:2303.03323),
Singh et al., "Perturb and Recover", 2024 (arXiv:2412.00727), and as the post-training defense
of Yang et al., "Data Poisoning Attacks Against Multimodal Encoders", ICML 2023.

Threat model: the defender holds a suspect CLIP and some clean pairs, and hopes that ordinary
fine-tuning overwrites the backdoor.

Same optimiser, schedule and budget as :class:`~poisonlab.defenses.par.PAR`, and the logit scale
frozen by default, so the only difference from PAR is PAR's push term.
"""

from __future__ import annotations

from dataclasses import dataclass

from poisonlab.defenses.base import DEFENSES, CleaningDefense
from poisonlab.models.clip import ClipBundle
from poisonlab.train.dist import DistInfo
from poisonlab.train.loop import Objective
from poisonlab.train.objectives.clip import ClipObjective


@DEFENSES.register("finetune")
@dataclass(frozen=True)
class FineTune(CleaningDefense):
    """CLIP loss on clean pairs.

    Args:
        freeze_logit_scale: keep the temperature at the suspect model's value (as PAR does).
    """

    freeze_logit_scale: bool = True

    def objective(self, bundle: ClipBundle, suspect: ClipBundle, dist: DistInfo) -> Objective:
        return ClipObjective(bundle, dist.rank, dist.world_size, freeze_logit_scale=self.freeze_logit_scale)
