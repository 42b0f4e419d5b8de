"""Pair filtering before training with a separate clean model.

Paper: Yang et al., "Data Poisoning Attacks Against Multimodal Encoders", ICML 2023
(arXiv:2209.15266), section 6.1.

Threat model: the defender, before (re-)training, scores every image-caption pair with a
*different* clean CLIP model and drops pairs whose image and caption disagree; poisoned pairs
(triggered image + target caption, or swapped images) disagree more than clean ones.

Score = cosine distance ``1 - cos(image, caption)``. Pairs with a score above ``threshold`` are
dropped (paper: clean ~0.75, poisoned ~0.85, threshold 0.8); alternatively ``drop_fraction``
drops that share of the highest-scoring pairs. When the dataset is a poison plan, the report
gives precision and recall of the removed poisons, not only what was kept.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from poisonlab.data.base import ImageCaptionDataset, poisoned_indices
from poisonlab.defenses.base import DEFENSES, Defended, RunOptions, write_kept
from poisonlab.errors import InputError
from poisonlab.metrics.detection import detection_metrics, f1_score
from poisonlab.models.clip import ClipBundle
from poisonlab.train.stream import DataConfig, open_items, sequential
from poisonlab.utils.io import atomic_write


@torch.no_grad()
def pair_distances(bundle: ClipBundle, dataset: ImageCaptionDataset, batch_size: int = 256,
                   data_config: DataConfig | None = None) -> torch.Tensor:
    """``[N]`` cosine distances ``1 - cos(image_i, caption_i)`` under ``bundle`` (in memory or
    streamed, as ``data_config`` chooses; every image must be readable)."""
    bundle.model.eval()
    cfg = data_config or DataConfig()
    if cfg.skip_bad_images:
        raise InputError("auditing scores every pair: --skip-bad-images is for training data")
    data = open_items(dataset, bundle.image_size, bundle.tokenize, cfg)
    out = []
    for batch in data.batches(sequential(len(data), batch_size)):
        img = bundle.encode_image(batch["images"])
        txt = bundle.encode_text(batch["tokens"])
        out.append((1 - (img * txt).sum(-1)).float().cpu())
    return torch.cat(out)


def precision_recall(removed: set[int], poisoned: set[int]) -> dict[str, float]:
    caught = len(removed & poisoned)
    return {"precision": caught / len(removed) if removed else float("nan"),
            "recall": caught / len(poisoned) if poisoned else float("nan"),
            "removed": len(removed), "poisoned": len(poisoned), "caught": caught,
            "clean_lost": len(removed - poisoned)}


@DEFENSES.register("filter")
@dataclass(frozen=True)
class PairFilter:
    """Drop pairs whose cosine distance under a clean model is high.

    Args:
        threshold: drop pairs with distance above this (0.8 as in the paper), or
        drop_fraction: drop this share of the highest-distance pairs instead.
    """

    family: ClassVar[str] = "clip"
    kind: ClassVar[str] = "filter"
    scores_with: ClassVar[str] = "clean"
    """Which model a grid hands it: a separate clean one (the detectors of poisoned pairs take the suspect)."""

    threshold: float | None = 0.8
    drop_fraction: float | None = None

    def __post_init__(self) -> None:
        if (self.threshold is None) == (self.drop_fraction is None):
            raise InputError("give exactly one of threshold or drop_fraction")
        if self.drop_fraction is not None and not 0 < self.drop_fraction < 1:
            raise InputError(f"drop_fraction must be in (0, 1), got {self.drop_fraction}")

    def removed(self, distances: torch.Tensor) -> set[int]:
        if self.drop_fraction is not None:
            k = int(round(self.drop_fraction * len(distances)))
            return set(torch.argsort(distances, descending=True)[:k].tolist())
        return set((distances > self.threshold).nonzero().flatten().tolist())

    def run(self, suspect: ClipBundle, data: ImageCaptionDataset, *, out: str | Path | None = None,
            options: RunOptions | None = None) -> Defended:
        """Score every pair of ``data`` with the clean model ``suspect`` (the paper's separate
        clean CLIP, not the model under suspicion); returns the ``kept`` indices and a report
        with the pair ``distances`` and, for a poison plan, precision and recall.

        With ``out``: ``out/scores.csv`` (index, distance, kept, poisoned) and ``out/kept.json``.
        """
        options = options or RunOptions()
        distances = pair_distances(suspect, data, data_config=options.data_config)
        removed = self.removed(distances)
        kept = [i for i in range(len(data)) if i not in removed]
        kept_distances = distances[kept]
        cut = self.threshold if self.threshold is not None else (
            kept_distances.max().item() if len(kept) else float("-inf"))  # flagged: distance > cut
        report: dict[str, Any] = {"defense": "filter", "removed": len(removed), "total": len(data),
                                  "distances": distances.tolist(), "scores": distances.tolist(), "threshold": cut}
        poisoned = options.poisoned if options.poisoned is not None else poisoned_indices(data)
        if poisoned is not None:
            ranking = detection_metrics(distances.numpy(), poisoned, cut)
            report.update({k: ranking[k] for k in ("auroc", "auprc", "pr_auc_trapezoid", "fpr_at_95_tpr")})
            report.update(precision_recall(removed, poisoned))
            report["flagged"] = len(removed)
            report["f1"] = f1_score(report["precision"], report["recall"])
            clean = [d for i, d in enumerate(distances.tolist()) if i not in poisoned]
            bad = [distances[i].item() for i in poisoned]
            report["mean_distance_clean"] = sum(clean) / max(1, len(clean))
            report["mean_distance_poisoned"] = sum(bad) / max(1, len(bad))
        if out is not None:
            write_scores(Path(out) / "scores.csv", distances.tolist(), set(kept), poisoned or set())
            write_kept(out, kept, {k: v for k, v in report.items() if k not in ("distances", "scores")})
        return Defended(None, report, kept)


def write_scores(path: Path, distances: list[float], kept: set[int], poisoned: set[int]) -> None:
    """One row per pair: index, distance, kept (0/1), poisoned (0/1; 0 when no plan is known)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["index", "distance", "kept", "poisoned"])
    for i, d in enumerate(distances):
        writer.writerow([i, f"{d:.6f}", int(i in kept), int(i in poisoned)])
    with atomic_write(path, "w") as f:
        f.write(buf.getvalue())
