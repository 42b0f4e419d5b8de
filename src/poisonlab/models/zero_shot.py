"""The zero-shot head of a CLIP bundle: class embeddings from names and a template ensemble.

Paper: Radford et al., 2021 (arXiv:2103.00020), section 3.1.4 (prompt ensembling): each class
embedding is the normalised mean of the normalised embeddings of its templated names.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from poisonlab.models.clip import ClipBundle

log = logging.getLogger(__name__)


@torch.no_grad()
def zero_shot_weights(bundle: ClipBundle, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """``[K, D]`` unit class embeddings (template ensemble)."""
    bundle.model.eval()
    weights = []
    for name in classnames:
        tokens = bundle.tokenize([t.format(name) for t in templates])
        emb = bundle.encode_text(tokens).mean(dim=0)
        weights.append(F.normalize(emb, dim=-1))
    return torch.stack(weights).cpu()


def zero_shot_predict(image_emb: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Predicted classes ``[N]`` for unit image embeddings ``[N, D]`` (:func:`top_class`)."""
    return top_class(image_emb @ weights.T)


def top_class(scores: torch.Tensor) -> torch.Tensor:
    """The class of highest score per row of ``[N, K]`` scores, or -1 where two or more share it.

    ``argmax`` would break the tie toward class 0: a collapsed model, which scores every class
    the same, would then measure as a perfect attack on class 0. A tie is no prediction: wrong
    for clean accuracy, no success for an attack."""
    top = scores.max(dim=1, keepdim=True).values
    tied = (scores == top).sum(dim=1) > 1
    if tied.any():
        log.warning("%d of %d images have no single top class (a tie, counted as no prediction): is the model "
                    "collapsed?", int(tied.sum()), len(tied))
    return torch.where(tied, -1, scores.argmax(dim=1))
