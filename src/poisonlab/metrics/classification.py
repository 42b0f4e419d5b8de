"""Classification metrics: clean accuracy and attack success rate.

Definitions (DESIGN.md, "Definitions that must not drift"):

- **CA**: top-1 accuracy on the clean test split.
- **ASR**: share of triggered test images *whose true class is not the target* that are
  classified as the target. ``asr_all`` counts all triggered images (what the PAR code reports).
  CleanCLIP's released code compared predictions with true labels instead: not done here.
- **RA** (robust accuracy): share of the same triggered non-target images classified as their
  true class (Pick your Poison calls it ARR, the attack recovery rate).
"""

from __future__ import annotations

import torch


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of ``predictions`` equal to ``labels`` (both ``[N]`` ints)."""
    if labels.numel() == 0:
        return float("nan")
    return float((predictions == labels).double().mean())


def attack_success_rate(predictions: torch.Tensor, labels: torch.Tensor, target: int) -> dict[str, float]:
    """ASR and RA over non-target images, and ``asr_all`` over all images.

    Args:
        predictions: ``[N]`` predicted classes of the *triggered* test images.
        labels: ``[N]`` true classes of those images.
        target: the attacker's target class.
    """
    hit = predictions == target
    non_target = labels != target
    asr = float(hit[non_target].double().mean()) if non_target.any() else float("nan")
    return {"asr": asr, "asr_all": float(hit.double().mean()),
            "ra": accuracy(predictions[non_target], labels[non_target])}
