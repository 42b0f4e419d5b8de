"""Drop the pairs a backdoored CLIP embeds as local outliers: k-distance, SLOF, DAO.

Paper: Huang et al., "Detecting Backdoor Samples in Contrastive Language Image Pretraining",
ICLR 2025 (arXiv:2502.01385); the scores are in :mod:`poisonlab.metrics.local_outliers`.

Threat model: unlike the cosine pair filter (:mod:`poisonlab.defenses.filter`, which needs a
separate clean CLIP), the model here is the *suspect* trained on the set: its embeddings of the
set are scored, the highest-scoring pairs are flagged, and the caller retrains without them.

The threshold never reads the poison labels. In order of preference:

1. ``drop_fraction``: flag that share of the highest scores;
2. a clean reference (``RunOptions.reference``, pairs the defender trusts): flag scores above the
   ``1 - fpr`` quantile of the reference images' scores, each scored against the same reference
   points as the set's own items;
3. otherwise the set's own ``1 - fpr`` quantile (the set is mostly clean; the report says so).
"""

from __future__ import annotations

import csv
import io
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from poisonlab.data.base import ImageCaptionDataset, poisoned_indices
from poisonlab.defenses.base import DEFENSES, Defended, RunOptions, write_kept
from poisonlab.errors import InputError
from poisonlab.metrics.detection import detection_metrics, quantile_threshold
from poisonlab.metrics.local_outliers import (
    DAO,
    SLOF,
    KDistance,
    LocalOutlierScore,
    Reference,
    score_items,
)
from poisonlab.metrics.pair_embeddings import (
    PairEmbeddings,
    embed_pairs,
    item_keys,
    load_embeddings,
    model_digest,
)
from poisonlab.models.clip import ClipBundle
from poisonlab.utils.io import atomic_write, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalOutlierFilter(Reference):
    """Score every pair by its image's local-outlier score under the suspect and flag the highest.

    Args (besides :class:`~poisonlab.metrics.local_outliers.Reference`'s ``k``, ``embeddings``,
    ``reference``, ``search``, ``mode``, ``batch_size``, ``nprobe``, ``seed``):
        fpr: the share of clean pairs the threshold may flag (its ``1 - fpr`` quantile).
        drop_fraction: flag this share of the highest scores instead.
        normalize: score unit-length embeddings (the authors use the raw ones).
    """

    family: ClassVar[str] = "clip"
    kind: ClassVar[str] = "filter"
    scores_with: ClassVar[str] = "suspect"
    score: ClassVar[type[LocalOutlierScore]]

    fpr: float = 0.01
    drop_fraction: float | None = None
    normalize: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.fpr < 1:
            raise InputError(f"fpr must be in (0, 1), got {self.fpr}")
        if self.drop_fraction is not None and not 0 < self.drop_fraction < 1:
            raise InputError(f"drop_fraction must be in (0, 1), got {self.drop_fraction}")

    @property
    def name(self) -> str:
        return getattr(type(self), "registered_name", type(self).__name__)

    def embed(self, suspect: ClipBundle, data: ImageCaptionDataset, folder: Path, options: RunOptions) -> PairEmbeddings:
        """The suspect's embeddings of ``data``: those in ``folder`` when they were made from the
        same data by the same model, else made anew there."""
        if (folder / "embeddings.json").exists():
            try:
                return load_embeddings(folder, data, model_digest(suspect), self.normalize)
            except InputError:
                log.info("%s holds embeddings of other data or another model; embedding again", folder)
        return embed_pairs(suspect, data, folder, normalize=self.normalize, data_config=options.data_config,
                           progress=options.progress)

    def run(self, suspect: ClipBundle, data: ImageCaptionDataset, *, out: str | Path | None = None,
            options: RunOptions | None = None) -> Defended:
        """Embed ``data`` with the suspect (reusing ``out/embeddings`` made from the same data and
        model), score every pair, flag those above the threshold; returns the ``kept`` indices and
        a report with the ``scores``, the threshold and where it came from, and, for a poison
        plan, the detection metrics (:func:`poisonlab.metrics.detection.detection_metrics`).

        With ``out``: ``scores.csv`` (index, key, score, flagged, poisoned), ``flagged.json``,
        ``kept.json`` and ``embeddings/``.
        """
        options = options or RunOptions()
        self.check_size(len(data))
        with tempfile.TemporaryDirectory(prefix="poisonlab-embeddings-") as scratch:
            if options.embeddings is not None:
                emb = load_embeddings(options.embeddings, data, model_digest(suspect), self.normalize)
            else:
                emb = self.embed(suspect, data, Path(out) / "embeddings" if out is not None else Path(scratch), options)
            extra = None
            if options.reference is not None:
                ref_emb = embed_pairs(suspect, options.reference, Path(scratch) / "reference", normalize=self.normalize,
                                      data_config=options.data_config, progress=options.progress)
                extra = np.asarray(ref_emb.images, dtype=np.float32)
            method = self.score()
            scores, clean_scores = score_items(method, self, emb.images, emb.texts, extra)
        threshold, source = self.threshold(scores, clean_scores if extra is not None else None)
        flagged = np.flatnonzero(scores > threshold)
        kept = np.flatnonzero(scores <= threshold).tolist()
        report: dict[str, Any] = {"defense": self.name, "params": asdict(self), "total": len(data),
                                  "removed": len(flagged), "threshold": threshold, "threshold_from": source,
                                  "scores": scores.tolist()}
        poisoned = options.poisoned if options.poisoned is not None else poisoned_indices(data)
        if poisoned is not None:
            report.update(detection_metrics(scores, poisoned, threshold))
        if out is not None:
            keys = item_keys(data)
            write_scores(Path(out) / "scores.csv", keys, scores, set(flagged.tolist()), poisoned or set())
            write_json(Path(out) / "flagged.json", {"threshold": threshold, "threshold_from": source,
                                                     "flagged": [{"index": int(i), "key": keys[i], "score": scores[i]}
                                                                 for i in flagged]})
            write_kept(out, kept, {k: v for k, v in report.items() if k != "scores"})
        return Defended(None, report, kept)

    @torch.no_grad()
    def score_inputs(self, suspect: ClipBundle, embeddings: PairEmbeddings, images: torch.Tensor,
                     batch_size: int = 256) -> np.ndarray:
        """Scores of input ``images`` (``[B, C, H, W]`` in ``[0, 1]``) against the set's reference
        points: the test-time use of Huang et al., flagging triggered inputs among clean ones."""
        suspect.model.eval()
        feats = [suspect.encode_image(images[i:i + batch_size], normalize=self.normalize).float().cpu()
                 for i in range(0, len(images), batch_size)]
        return score_items(self.score(), self, embeddings.images, embeddings.texts, torch.cat(feats).numpy())[1]

    def threshold(self, scores: np.ndarray, clean: np.ndarray | None) -> tuple[float, str]:
        """The flagging threshold and what it was set from (never the poison labels)."""
        if self.drop_fraction is not None:
            count = int(round(self.drop_fraction * len(scores)))
            top = np.sort(scores)[::-1]
            return (float(top[count]) if count < len(top) else -np.inf), f"top {self.drop_fraction:g} share"
        if clean is not None:
            return quantile_threshold(clean, self.fpr), f"clean reference ({len(clean)} pairs), fpr {self.fpr:g}"
        return quantile_threshold(scores, self.fpr), f"the set itself (no clean reference), fpr {self.fpr:g}"


@DEFENSES.register("kdist")
@dataclass(frozen=True)
class KDistanceFilter(LocalOutlierFilter):
    """k-distance (Huang et al., ICLR 2025): the distance to the k-th nearest reference point."""

    score: ClassVar[type[LocalOutlierScore]] = KDistance


@DEFENSES.register("slof")
@dataclass(frozen=True)
class SlofFilter(LocalOutlierFilter):
    """Simplified local outlier factor (Huang et al., ICLR 2025): k-distance over the neighbours'."""

    score: ClassVar[type[LocalOutlierScore]] = SLOF


@DEFENSES.register("dao")
@dataclass(frozen=True)
class DaoFilter(LocalOutlierFilter):
    """Dimensionality-aware outlier score (Huang et al., ICLR 2025): SLOF's log-ratio weighted by
    each neighbour's local intrinsic dimensionality."""

    score: ClassVar[type[LocalOutlierScore]] = DAO


def write_scores(path: Path, keys: list[str], scores: np.ndarray, flagged: set[int], poisoned: set[int]) -> None:
    """One row per pair: index, key, score, flagged (0/1), poisoned (0/1; 0 when no plan is known)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["index", "key", "score", "flagged", "poisoned"])
    for i, (key, s) in enumerate(zip(keys, scores, strict=True)):
        writer.writerow([i, key, f"{s:.6g}", int(i in flagged), int(i in poisoned)])
    with atomic_write(path, "w") as f:
        f.write(buf.getvalue())
