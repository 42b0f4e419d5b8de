"""The zero-shot head of a CLIP bundle: class embeddings from names and a template ensemble.

Paper: Radford et al., 2021 (arXiv:2103.00020), section 3.1.4 (prompt ensembling): each class
embedding is the normalised mean of the normalised embeddings of its templated names.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from poisonlab.models.clip import ClipBundle


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
    """Predicted classes ``[N]`` for unit image embeddings ``[N, D]``."""
    return (image_emb @ weights.T).argmax(dim=1)
