"""Retrieval metrics: R@K both ways, and Hit@K / MinRank for text-modality poisoning.

Hit@K and MinRank follow Yang et al., "Data Poisoning Attacks Against Multimodal Encoders", ICML
2023 (arXiv:2209.15266), with DESIGN.md's fixed definition: for each query caption, ``r`` is the
**0-based** rank of the best-ranked target image in the gallery; Hit@K = share of queries with
``r < K``; MinRank = mean ``r``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

KS = (1, 5, 10)


def best_target_rank(scores: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """0-based rank of the best-scored target per query.

    Args:
        scores: ``[Q, G]`` query-gallery similarities.
        target_mask: ``[G]`` or ``[Q, G]`` booleans marking the target gallery items.

    Returns:
        ``[Q]`` ranks: how many other gallery items score at least as high as the best target. Ties
        count against the target: a collapsed model, which scores every item the same, ranks it
        last, not first (with distinct scores this is the count of items scoring above it).
    """
    mask = target_mask.expand_as(scores)
    if not mask.any(dim=1).all():
        raise ValueError("every query needs at least one target in the gallery")
    best = scores.masked_fill(~mask, float("-inf")).max(dim=1, keepdim=True).values
    return ((scores >= best) & ~mask).sum(dim=1)


def hit_and_min_rank(scores: torch.Tensor, target_mask: torch.Tensor, ks: Sequence[int] = KS) -> dict[str, float]:
    """``{"hit@1": ..., "hit@5": ..., "hit@10": ..., "min_rank": ...}``."""
    ranks = best_target_rank(scores, target_mask).double()
    out = {f"hit@{k}": float((ranks < k).double().mean()) for k in ks}
    out["min_rank"] = float(ranks.mean())
    return out


def recall_at_k(image_emb: torch.Tensor, text_emb: torch.Tensor, ks: Sequence[int] = KS,
                captions: Sequence[str] | None = None) -> dict[str, float]:
    """R@K for image->text and text->image on paired embeddings (pair i = image i, caption i).

    With ``captions``, an image's answer is any caption with its caption's text (the same words
    are the same answer; ties between them are no error); a caption's answer is its own image."""
    sims = image_emb @ text_emb.T
    eye = torch.eye(sims.shape[0], dtype=torch.bool)
    same = eye
    if captions is not None:
        ids = {c: i for i, c in enumerate(captions)}
        code = torch.tensor([ids[c] for c in captions])
        same = code[:, None] == code[None, :]
    i2t = best_target_rank(sims, same)
    t2i = best_target_rank(sims.T, eye)
    out = {}
    for k in ks:
        out[f"i2t_r@{k}"] = float((i2t < k).double().mean())
        out[f"t2i_r@{k}"] = float((t2i < k).double().mean())
    return out
