"""PatchSearch: find and remove patch-poisoned images from an unlabeled SSL training set.

Paper: Tejankar et al., "Defending Against Patch-based Backdoor Attacks on Self-Supervised
Learning", CVPR 2023.

With the (possibly poisoned) encoder trained on the data:

1. k-means (scikit-learn) on the normalised features of every training image.
2. For an image, Grad-CAM toward its cluster centre (gradient of the cosine to the centre with
   respect to the last feature map) locates the region that makes it belong there; the
   ``window`` x ``window`` crop with the largest CAM sum is a candidate trigger.
3. Poison score of a candidate: how many held-out images (of other clusters) move into the
   candidate's cluster when it is pasted on them at a random place.
4. Iterative search: score ``per_cluster`` new images in every surviving cluster, rank clusters
   by their best score, drop the lowest ``prune`` share; repeat until ``min_clusters`` remain.
5. A small poison classifier (a timm model) learns "top-ranked patches pasted on low-ranked
   images" against "low-ranked images"; every training image it flags is removed.

The caller retrains on the kept images. With the poison plan known, the report has the
precision and recall of the removed images.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans

from poisonlab.data.base import ImageCaptionDataset, poisoned_indices
from poisonlab.defenses.base import DEFENSES, Defended, RunOptions, write_kept
from poisonlab.metrics.classifier_eval import predict
from poisonlab.metrics.probe import embed
from poisonlab.models.classifier import ClassifierBundle, create_classifier
from poisonlab.models.normalize import normalize_images
from poisonlab.models.protocols import Classifier
from poisonlab.train.data import LabelTensors, label_tensors
from poisonlab.train.loop import Objective, TrainConfig, Trainer
from poisonlab.train.objectives.supervised import SupervisedObjective
from poisonlab.utils.seeding import make_generator

log = logging.getLogger(__name__)


def grad_cam(encoder: ClassifierBundle, images: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """``[B, H, W]`` Grad-CAM maps of ``cos(f(x), center)`` for a timm backbone encoder."""
    model = encoder.model
    x = normalize_images(images, encoder.mean, encoder.std)
    with torch.enable_grad():
        fmap = model.forward_features(x.to(encoder.device))
        fmap.retain_grad()
        feats = model.forward_head(fmap, pre_logits=True)
        score = F.cosine_similarity(feats, centers.to(feats), dim=1).sum()
        score.backward()
    weights = fmap.grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * fmap).sum(1, keepdim=True)).detach()
    return F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0].cpu()


def best_windows(cams: torch.Tensor, window: int) -> torch.Tensor:
    """``[B, 2]`` top-left corners (y, x) of the window with the largest CAM sum."""
    sums = F.avg_pool2d(cams[:, None], window, stride=1)[:, 0]
    flat = sums.flatten(1).argmax(1)
    return torch.stack([flat // sums.shape[-1], flat % sums.shape[-1]], 1)


def paste(images: torch.Tensor, patch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Paste ``patch`` ``[C, w, w]`` at a random place on each of ``images`` (float ``[0, 1]``)."""
    b, _, h, w = images.shape
    side = patch.shape[-1]
    ys = torch.randint(0, h - side + 1, (b,), generator=generator)
    xs = torch.randint(0, w - side + 1, (b,), generator=generator)
    out = images.clone()
    for i in range(b):
        out[i, :, ys[i] : ys[i] + side, xs[i] : xs[i] + side] = patch
    return out


class _PoisonClassifierObjective(Objective):
    """Half of each batch gets a random top-ranked patch pasted on it and the label 1."""

    def __init__(self, classifier: Classifier, patches: torch.Tensor) -> None:
        self.ce = SupervisedObjective(classifier)
        self.model, self.patches = classifier.module, patches

    def loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        x = batch["images"]
        half = len(x) // 2
        pick = torch.randint(0, len(self.patches), (half,), generator=generator)
        poisoned = torch.cat([paste(x[i : i + 1], self.patches[int(pick[i])], generator) for i in range(half)])
        images = torch.cat([poisoned, x[half:]])
        labels = torch.cat([torch.ones(half, dtype=torch.long), torch.zeros(len(x) - half, dtype=torch.long)])
        return self.ce.loss({"images": images, "labels": labels.to(x.device)}, generator)


@DEFENSES.register("patchsearch")
@dataclass(frozen=True)
class PatchSearch:
    """The search and the poison classifier above; ``run`` returns the images it keeps."""

    family: ClassVar[str] = "encoder"
    kind: ClassVar[str] = "filter"

    clusters: int = 100
    window: int | None = None
    per_cluster: int = 2
    prune: float = 0.25
    min_clusters: int = 5
    holdout: int = 64
    top_patches: int = 20
    classifier_steps: int = 300
    seed: int = 0

    def _window(self, size: int) -> int:
        return self.window or max(3, round(size * 60 / 224))  # the paper's 60 px at 224

    def _score(self, encoder: ClassifierBundle, data: LabelTensors, idx: torch.Tensor, assign: np.ndarray,
               centers: torch.Tensor, kmeans: KMeans) -> tuple[torch.Tensor, torch.Tensor]:
        """Poison scores and candidate patches of the images ``idx``."""
        x = data.images[idx].float() / 255.0
        cams = grad_cam(encoder, x, centers[assign[idx.numpy()]])
        w = self._window(x.shape[-1])
        corners = best_windows(cams, w)
        g = make_generator("patchsearch-paste", self.seed, int(idx[0]))
        scores, patches = [], []
        for i, (y0, x0) in enumerate(corners.tolist()):
            patch = x[i, :, y0 : y0 + w, x0 : x0 + w]
            others = np.flatnonzero(assign != assign[int(idx[i])])
            pick = torch.as_tensor(others)[torch.randperm(len(others), generator=g)[: self.holdout]]
            pasted = paste(data.images[pick].float() / 255.0, patch, g)
            feats = F.normalize(embed(encoder, (pasted * 255).round().to(torch.uint8)), dim=1).numpy()
            moved = kmeans.predict(feats.astype(np.float32)) == assign[int(idx[i])]
            scores.append(int(moved.sum()))
            patches.append(patch)
        return torch.tensor(scores), torch.stack(patches)

    def search(self, encoder: ClassifierBundle, data: LabelTensors) -> dict[str, Any]:
        """Steps 1-4: scores of the searched images and their candidate patches."""
        feats = F.normalize(embed(encoder, data.images), dim=1).numpy().astype(np.float32)
        k = min(self.clusters, len(feats))
        kmeans = KMeans(n_clusters=k, n_init=3, random_state=self.seed).fit(feats)
        assign, centers = kmeans.labels_, torch.from_numpy(kmeans.cluster_centers_)
        g = make_generator("patchsearch", self.seed)
        alive, scored, patches, best = list(range(k)), {}, {}, dict.fromkeys(range(k), -1)
        while not scored or len(alive) > self.min_clusters:  # at least one round, even with few clusters
            todo = []
            for c in alive:
                members = [i for i in np.flatnonzero(assign == c).tolist() if i not in scored]
                order = torch.randperm(len(members), generator=g)[: self.per_cluster]
                todo += [members[int(j)] for j in order]
            if not todo:
                break
            idx = torch.tensor(todo)
            s, p = self._score(encoder, data, idx, assign, centers, kmeans)
            for i, score, patch in zip(todo, s.tolist(), p, strict=True):
                scored[i], patches[i] = score, patch
                best[int(assign[i])] = max(best[int(assign[i])], score)
            alive.sort(key=lambda c: best[c], reverse=True)
            alive = alive[: max(self.min_clusters, int(len(alive) * (1 - self.prune)))]
        return {"scores": scored, "patches": patches, "assign": assign, "alive": alive}

    def run(self, suspect: ClassifierBundle, data: ImageCaptionDataset | LabelTensors, *, out: str | Path | None = None,
            options: RunOptions | None = None) -> Defended:
        """Search, train the poison classifier, and flag images of the training set ``data``.

        ``options.poisoned`` (default: ``data``'s poison plan, when it has one) gives precision and
        recall. With ``out``, the kept indices are written to ``out/kept.json``.
        """
        poisoned = options.poisoned if options is not None and options.poisoned is not None else poisoned_indices(data)
        if not isinstance(data, LabelTensors):
            data = label_tensors(data, suspect.image_size)
        encoder = suspect
        found = self.search(encoder, data)
        ranked = sorted(found["scores"], key=found["scores"].get, reverse=True)
        top = torch.stack([found["patches"][i] for i in ranked[: self.top_patches]])
        low = ranked[len(ranked) // 2 :]
        clf = create_classifier(num_classes=2, image_size=encoder.image_size, seed=self.seed)
        cfg = TrainConfig.recipe("classifier", steps=self.classifier_steps, batch_size=min(64, len(low)), warmup=0,
                                 seed=self.seed)
        Trainer(_PoisonClassifierObjective(clf, top), data.subset(low), cfg, progress=False).fit()
        flagged = predict(clf, data.images).eq(1).nonzero().flatten().tolist()
        kept = sorted(set(range(len(data))) - set(flagged))
        report: dict[str, Any] = {"defense": "patchsearch", "params": asdict(self), "removed": len(flagged),
                                  "total": len(data), "searched": len(ranked), "top_ranked": ranked[: self.top_patches]}
        if poisoned is not None:
            caught = len(set(flagged) & poisoned)
            report.update(poisoned=len(poisoned), caught=caught,
                          precision=caught / len(flagged) if flagged else float("nan"),
                          recall=caught / len(poisoned) if poisoned else float("nan"),
                          top_ranked_poisoned=sum(i in poisoned for i in ranked[: self.top_patches]))
        if out is not None:
            write_kept(out, kept, report)
        return Defended(None, report, kept)
