"""k-distance, SLOF and DAO: poisoned pairs are local outliers of a backdoored CLIP's embeddings.

Paper: Huang et al., "Detecting Backdoor Samples in Contrastive Language Image Pretraining",
ICLR 2025 (arXiv:2502.01385); released code HanxunH/Detect-CLIP-Backdoor-Samples,
``backdoor_sample_detector/{k_distance,slof,dao}.py``.

A model trained on poisoned pairs maps the triggered images into a tight cluster far from the clean
data: each poisoned image's k nearest neighbours are the other poisoned images, at a distance
unlike a clean image's. Each item is scored by its image embedding (unnormalised ``encode_image``
output, as the authors) against a reference of points: the other images, the captions, or both
(the authors' default). With ``d_i(x)`` the distance to the i-th nearest reference point (own pair
left out) and ``N_k(x)`` the k nearest:

- k-distance: ``d_k(x)``;
- SLOF (simplified local outlier factor): ``mean_{o in N_k(x)} d_k(x) / d_k(o)``;
- DAO (dimensionality-aware outlier): ``mean_{o in N_k(x)} LID(o) log(d_k(x) / d_k(o))`` with the
  MLE local intrinsic dimensionality ``LID(o) = -k / sum_{i<=k} log(d_i(o) / d_k(o) + 1e-4)``.

Higher is more suspicious; NaN and +inf become 1000 and -inf 0, as the authors.

Two definitions (``mode``):

- ``corrected`` (poisonlab's default): the formulas above, with every point's neighbours leaving
  out its own pair (image and caption).
- ``authors``: the released code's arithmetic on each batch, quirks included, to reproduce its
  numbers: the query's ``d_k`` is its (k+1)-th neighbour while a neighbour's is its k-th; the
  neighbours' indices, taken from the row with the query's own image and caption removed, are
  read on the full reference (so every one past the query's position is off by one, and the
  caption part shifted); a neighbour's own caption counts among its neighbours and its LID sums
  a term for itself, ``log(d_self / d_k + 1e-4)``, where ``d_self`` is whatever ``torch.cdist``'s
  matrix-product path leaves of a zero distance (rounding noise, so DAO depends on it). Defined
  on a batch only.

Reference (``reference``): the authors score each item against its training batch (2,048 pairs
gathered over 4 GPUs, shuffled); ``batch`` (the default) splits the set into shuffled batches of
``batch_size`` (as few batches as fit, sizes within one of each other); ``all`` scores against
the whole set (exact, or approximate with faiss, :mod:`poisonlab.metrics.neighbours`). A poison
cluster is a local outlier only while it holds fewer than about ``k`` points of the reference:
the batch keeps it small (0.3% of 2,048 is 6), the whole set does not (0.3% of 1M is 3,000, each
poison's k neighbours all poisons), so ``all`` suits small sets or a ``k`` above the poison count
(docs/results/detectors.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from poisonlab.errors import InputError
from poisonlab.metrics.neighbours import Neighbours, RowStack, nearest

EMBEDDINGS = ("image", "text", "both")
REFERENCES = ("batch", "all")
MODES = ("corrected", "authors")
LID_EPS = 1e-4


def finite_scores(scores: np.ndarray) -> np.ndarray:
    """The authors' clean-up: NaN and +inf -> 1000, -inf -> 0."""
    return np.nan_to_num(scores.astype(np.float64), nan=1000.0, posinf=1000.0, neginf=0.0)


def lid(distances: np.ndarray) -> np.ndarray:
    """MLE local intrinsic dimensionality of each row of ascending neighbour ``distances`` ``[P, k]``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return -distances.shape[1] / np.log(distances / distances[:, -1:] + LID_EPS).sum(1)


class LocalOutlierScore:
    """One score of an item from its neighbours; subclasses are the paper's three detectors."""

    name: ClassVar[str]
    needs_points: ClassVar[bool] = True
    """Whether the score reads the neighbours' own neighbour distances (SLOF, DAO)."""

    def score(self, query: Neighbours, points: Neighbours | None) -> np.ndarray:
        """``[Q]`` scores of the queries from their neighbours (``query``) and every reference
        point's (``points``)."""
        raise NotImplementedError

    def authors(self, row: np.ndarray, order: np.ndarray, full: np.ndarray, k: int) -> np.ndarray:
        """The released code's score from the sorted masked query rows ``row`` (``[b, m]``), their
        argsort ``order`` and the sorted full reference distances ``full`` (``[r, r]``, self first)."""
        raise NotImplementedError


class KDistance(LocalOutlierScore):
    name = "kdist"
    needs_points = False

    def score(self, query: Neighbours, points: Neighbours | None) -> np.ndarray:
        return finite_scores(query.distances[:, -1])

    def authors(self, row: np.ndarray, order: np.ndarray, full: np.ndarray, k: int) -> np.ndarray:
        return finite_scores(row[:, k])


class SLOF(LocalOutlierScore):
    name = "slof"

    def score(self, query: Neighbours, points: Neighbours | None) -> np.ndarray:
        assert points is not None
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = query.distances[:, -1:] / points.distances[query.indices, -1]
        return finite_scores(ratio.mean(1))

    def authors(self, row: np.ndarray, order: np.ndarray, full: np.ndarray, k: int) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return finite_scores((row[:, k:k + 1] / full[order[:, :k], k]).mean(1))


class DAO(LocalOutlierScore):
    name = "dao"

    def score(self, query: Neighbours, points: Neighbours | None) -> np.ndarray:
        assert points is not None
        neighbour_lid = lid(points.distances)[query.indices]
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = neighbour_lid * np.log(query.distances[:, -1:] / points.distances[query.indices, -1])
        return finite_scores(terms.mean(1))

    def authors(self, row: np.ndarray, order: np.ndarray, full: np.ndarray, k: int) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            full_lid = -k / np.log(full[:, :k] / full[:, k:k + 1] + LID_EPS).sum(1)
            nb = order[:, :k]
            terms = full_lid[nb] * np.log(row[:, k:k + 1] / full[nb, k])
        return finite_scores(terms.mean(1))


SCORES: dict[str, type[LocalOutlierScore]] = {c.name: c for c in (KDistance, SLOF, DAO)}


@dataclass(frozen=True)
class Reference:
    """Which points an item is scored against, and how they are searched.

    Args:
        k: neighbours (the authors' 16).
        embeddings: ``both`` (images and captions, the authors' default), ``image`` or ``text``.
        reference: ``batch`` (shuffled batches of ``batch_size``, as the authors score each
            training batch) or ``all`` (the whole set).
        search: ``exact`` or ``faiss`` (approximate; ``nprobe`` lists searched).
        mode: ``corrected`` or ``authors`` (the released code's arithmetic; needs ``batch``).
        seed: the batches' shuffle and faiss's k-means.
    """

    k: int = 16
    embeddings: str = "both"
    reference: str = "batch"
    search: str = "exact"
    mode: str = "corrected"
    batch_size: int = 2048
    nprobe: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        for name, value, allowed in (("embeddings", self.embeddings, EMBEDDINGS), ("reference", self.reference, REFERENCES),
                                     ("mode", self.mode, MODES)):
            if value not in allowed:
                raise InputError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.k < 1 or self.batch_size < 2 or self.nprobe < 1:
            raise InputError(f"k, nprobe must be >= 1 and batch_size >= 2, got {self.k}, {self.nprobe}, {self.batch_size}")
        if self.mode == "authors" and (self.reference != "batch" or self.embeddings == "text"):
            raise InputError("mode=authors reproduces the released code on a batch: it needs reference=batch "
                             "and embeddings image or both")

    def check_size(self, n: int) -> None:
        """``InputError`` unless each of ``n`` items has ``k`` reference points besides its own pair
        in the smallest batch."""
        if n == 0:
            raise InputError("the dataset is empty: there is nothing to score")
        smallest = n if self.reference == "all" else n // -(-n // self.batch_size)  # array_split's smallest
        have = (smallest - 1) * (2 if self.embeddings == "both" else 1) - (self.mode == "authors")
        if self.k > have:
            raise InputError(f"k = {self.k} is larger than the {max(have, 0)} points each item can have as "
                             "neighbours; give a smaller k or more data")

    def batches(self, n: int) -> list[np.ndarray]:
        """The items of each reference batch (one batch of everything for ``all``)."""
        if self.reference == "all":
            return [np.arange(n)]
        order = np.random.default_rng(self.seed).permutation(n)
        return [np.sort(b) for b in np.array_split(order, -(-n // self.batch_size))]


def score_items(method: LocalOutlierScore, ref: Reference, images: np.ndarray, texts: np.ndarray | None,
                extra: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scores of every item of the set and of ``extra`` queries (images from outside the set, e.g.
    a clean reference for the threshold or test inputs), each against ``ref``'s reference points.

    An outside query is scored against the batch it is dealt to (round robin) under ``batch``.

    Returns:
        ``([N], [E])`` float64 scores (``[0]`` when ``extra`` is None).
    """
    if ref.embeddings != "image" and texts is None:
        raise InputError(f"embeddings={ref.embeddings} needs the captions' embeddings")
    ref.check_size(len(images))
    extra = np.zeros((0, images.shape[1]), np.float32) if extra is None else extra
    scores, outside = np.zeros(len(images)), np.zeros(len(extra))
    batches = ref.batches(len(images))
    for b, items in enumerate(batches):
        mine = np.arange(b, len(extra), len(batches))
        score_batch = _authors_batch if ref.mode == "authors" else _corrected_batch
        scores[items], outside[mine] = score_batch(method, ref, items, images, texts, extra[mine])
    return scores, outside


def _rows(array: np.ndarray, items: np.ndarray, whole: bool) -> np.ndarray:
    """``array[items]``: the array itself (memory-mapped, not read) when ``items`` is every row."""
    return array if whole else np.asarray(array[items], dtype=np.float32)


def _reference_points(ref: Reference, items: np.ndarray, images: np.ndarray,
                      texts: np.ndarray | None) -> tuple[RowStack, np.ndarray]:
    whole = len(items) == len(images)
    chosen = {"image": (images,), "text": (texts,), "both": (images, texts)}[ref.embeddings]
    parts = [_rows(e, items, whole) for e in chosen if e is not None]
    return RowStack(*parts), np.tile(np.arange(len(items)), len(parts))


def _corrected_batch(method: LocalOutlierScore, ref: Reference, items: np.ndarray, images: np.ndarray,
                     texts: np.ndarray | None, extra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    points, groups = _reference_points(ref, items, images, texts)
    own = _rows(images, items, len(items) == len(images))
    queries = RowStack(own, np.asarray(extra, dtype=np.float32))
    query_groups = np.concatenate([np.arange(len(items)), np.full(len(extra), -1)])
    search = dict(search=ref.search, nprobe=ref.nprobe, seed=ref.seed)
    point_nb = nearest(points, points, ref.k, groups, groups, **search) if method.needs_points else None
    if point_nb is not None and ref.embeddings != "text":
        rest = nearest(RowStack(np.asarray(extra, dtype=np.float32)), points, ref.k, query_groups[len(items):],
                       groups, **search)
        query_nb = Neighbours(np.concatenate([point_nb.distances[:len(items)], rest.distances]),
                              np.concatenate([point_nb.indices[:len(items)], rest.indices]))
    else:
        query_nb = nearest(queries, points, ref.k, query_groups, groups, **search)
    out = method.score(query_nb, point_nb)
    return out[:len(items)], out[len(items):]


def _authors_batch(method: LocalOutlierScore, ref: Reference, items: np.ndarray, images: np.ndarray,
                   texts: np.ndarray | None, extra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The released code's arithmetic on one batch: in-batch rows lose the diagonal of each block
    (own image, own caption) and read the neighbour indices of that shorter row on the full
    reference; outside queries have nothing removed (so no shift)."""
    x = torch.from_numpy(np.asarray(images[items], dtype=np.float32))
    blocks = [x] if ref.embeddings == "image" else [x, torch.from_numpy(np.asarray(texts[items], dtype=np.float32))]
    b, k = len(x), ref.k
    off_diagonal = ~torch.eye(b, dtype=torch.bool)
    rows = torch.cat([torch.cdist(x, blk)[off_diagonal].view(b, b - 1) for blk in blocks], dim=1)
    full_ref = torch.cat(blocks)
    full = torch.sort(torch.cdist(full_ref, full_ref), dim=1).values.numpy()
    row, order = (t.numpy() for t in torch.sort(rows, dim=1))
    inside = method.authors(row, order, full, k)
    if not len(extra):
        return inside, np.zeros(0)
    e_row, e_order = (t.numpy() for t in torch.sort(torch.cdist(torch.from_numpy(np.asarray(extra, np.float32)), full_ref), dim=1))
    return inside, method.authors(e_row, e_order, full, k)
