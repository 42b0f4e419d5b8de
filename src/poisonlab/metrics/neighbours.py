"""k nearest neighbours of embeddings, excluding each query's own pair, exact or with faiss.

Used by the local-outlier detectors of poisoned pairs (:mod:`poisonlab.metrics.local_outliers`,
after Huang et al., "Detecting Backdoor Samples in Contrastive Language Image Pretraining",
ICLR 2025). Every point belongs to a *group* (the index of its image-caption pair); a query never
counts a point of its own group as a neighbour, so an image is not its own neighbour and, when the
captions join the reference, not its caption's either. Queries from outside the set take group
``-1`` and exclude nothing.

Two searches:

- ``exact``: Euclidean distances (``torch.cdist``) chunk by chunk, queries x points, so memory
  stays at one ``chunk x chunk`` block whatever the set's size; float16 memory-mapped inputs are
  read a chunk at a time.
- ``faiss``: faiss's inverted-file index (``IndexIVFFlat``, ``nlist`` about ``4 sqrt(P)`` lists,
  ``nprobe`` of them searched, its k-means trained on 64 points a list), approximate: a neighbour
  in a list not probed is missed, so distances can only be larger than the exact ones. Small sets
  (under 39 points per list) use faiss's exact ``IndexFlatL2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from poisonlab.errors import InputError

SEARCHES = ("exact", "faiss")


@dataclass
class Neighbours:
    """The ``k`` nearest points of each query, nearest first.

    Attributes:
        distances: ``[Q, k]`` float32 Euclidean distances, ascending along each row.
        indices: ``[Q, k]`` int64 indices into the points.
    """

    distances: np.ndarray
    indices: np.ndarray

    def __getitem__(self, rows: slice | np.ndarray) -> Neighbours:
        return Neighbours(self.distances[rows], self.indices[rows])


class RowStack:
    """Several ``[N_i, D]`` arrays (memory-mapped ones included) read as one ``[sum N_i, D]`` array
    without copying them: slices and index arrays gather only the rows asked for."""

    def __init__(self, *parts: np.ndarray) -> None:
        self.parts = [p for p in parts if len(p)]
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])
        width = {p.shape[1] for p in self.parts}
        if len(width) > 1:
            raise InputError(f"embeddings of different widths: {sorted(width)}")
        self.shape = (int(self.starts[-1]), width.pop() if width else 0)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: slice | np.ndarray) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            rows = np.arange(start, stop, step)
        else:
            rows = np.asarray(key)
        out = np.empty((len(rows), self.shape[1]), dtype=np.float32)
        part = np.searchsorted(self.starts, rows, side="right") - 1
        for i, array in enumerate(self.parts):
            mine = part == i
            if mine.any():
                local = rows[mine] - self.starts[i]
                lo, hi = local.min(), local.max() + 1
                out[mine] = np.asarray(array[lo:hi], dtype=np.float32)[local - lo]
        return out


def nearest(queries: np.ndarray, points: np.ndarray, k: int, query_groups: np.ndarray, point_groups: np.ndarray,
            *, search: str = "exact", chunk: int = 4096, nprobe: int = 16, seed: int = 0) -> Neighbours:
    """The ``k`` nearest ``points`` of every query, leaving out points of the query's own group.

    Args:
        queries, points: ``[Q, D]`` and ``[P, D]`` embeddings (any float dtype, memory-mapped is
            fine, or a :class:`RowStack`); read a chunk at a time.
        query_groups, point_groups: ``[Q]`` and ``[P]`` integer groups (pair indices; ``-1`` for a
            query that shares a group with no point).
        search: ``exact`` or ``faiss`` (see the module docstring); ``nprobe`` and ``seed`` (of
            faiss's k-means) apply to ``faiss``.

    Raises:
        InputError: fewer than ``k`` points are left to some query, or an embedding is not finite.
    """
    if search not in SEARCHES:
        raise InputError(f"search must be one of {', '.join(SEARCHES)}, got {search!r}")
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    point_groups = np.asarray(point_groups, dtype=np.int64)
    query_groups = np.asarray(query_groups, dtype=np.int64)
    shared = int(np.bincount(point_groups[point_groups >= 0]).max()) if (point_groups >= 0).any() else 0
    if k > len(points) - shared:
        raise InputError(f"k = {k} is larger than the {len(points) - shared} points each item can have as "
                         "neighbours; give a smaller k or more data")
    if search == "faiss":
        return _faiss(queries, points, k, query_groups, point_groups, shared, chunk, nprobe, seed)
    return _exact(queries, points, k, query_groups, point_groups, chunk)


def _block(array: np.ndarray | RowStack, start: int, stop: int) -> torch.Tensor:
    block = torch.from_numpy(np.ascontiguousarray(array[start:stop], dtype=np.float32))
    if not torch.isfinite(block).all():
        raise InputError("an embedding is not finite (NaN or inf): the model or its input is broken")
    return block


def _exact(queries: np.ndarray, points: np.ndarray, k: int, query_groups: np.ndarray, point_groups: np.ndarray,
           chunk: int) -> Neighbours:
    dist = np.empty((len(queries), k), dtype=np.float32)
    index = np.empty((len(queries), k), dtype=np.int64)
    pg = torch.from_numpy(point_groups)
    for qs in range(0, len(queries), chunk):
        q = _block(queries, qs, qs + chunk)
        qg = torch.from_numpy(query_groups[qs:qs + chunk])
        best_d = torch.full((len(q), 0), math.inf)
        best_i = torch.zeros((len(q), 0), dtype=torch.long)
        for ps in range(0, len(points), chunk):
            p = _block(points, ps, ps + chunk)
            d = torch.cdist(q, p)
            d.masked_fill_(qg[:, None] == pg[None, ps:ps + len(p)], math.inf)
            near_d, near_i = torch.topk(d, min(k, d.shape[1]), dim=1, largest=False, sorted=False)
            cand_d, cand_i = torch.cat([best_d, near_d], dim=1), torch.cat([best_i, near_i + ps], dim=1)
            best_d, pos = torch.topk(cand_d, min(k, cand_d.shape[1]), dim=1, largest=False, sorted=True)
            best_i = torch.gather(cand_i, 1, pos)
        dist[qs:qs + len(q)], index[qs:qs + len(q)] = best_d.numpy(), best_i.numpy()
    return Neighbours(dist, index)


def _faiss(queries: np.ndarray, points: np.ndarray, k: int, query_groups: np.ndarray, point_groups: np.ndarray,
           shared: int, chunk: int, nprobe: int, seed: int) -> Neighbours:
    import faiss  # an optional accelerator: the exact search needs nothing beyond torch

    faiss.omp_set_num_threads(torch.get_num_threads())
    dim = points.shape[1]
    nlist = int(min(4 * math.sqrt(len(points)), len(points) // 39))
    if nlist >= 2:
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
        index.cp.seed = seed
        sample = np.random.default_rng(seed).choice(len(points), min(len(points), 64 * nlist), replace=False)
        index.train(np.ascontiguousarray(points[np.sort(sample)], dtype=np.float32))
        index.nprobe = min(nprobe, nlist)
    else:
        index = faiss.IndexFlatL2(dim)
    for ps in range(0, len(points), chunk):
        index.add(_block(points, ps, ps + chunk).numpy())
    wanted = k + shared
    dist = np.empty((len(queries), k), dtype=np.float32)
    found = np.empty((len(queries), k), dtype=np.int64)
    for qs in range(0, len(queries), chunk):
        q = _block(queries, qs, qs + chunk).numpy()
        d2, ids = index.search(q, wanted)
        own = (ids < 0) | (point_groups[np.clip(ids, 0, None)] == query_groups[qs:qs + len(q), None])
        d2 = np.where(own, np.inf, d2)
        order = np.argsort(d2, axis=1, kind="stable")[:, :k]
        rows_d = np.take_along_axis(d2, order, 1)
        if not np.isfinite(rows_d).all():
            raise InputError(f"faiss found fewer than k = {k} neighbours for some item (raise nprobe or use "
                             "search=exact)")
        dist[qs:qs + len(q)] = np.sqrt(np.maximum(rows_d, 0))
        found[qs:qs + len(q)] = np.take_along_axis(ids, order, 1)
    return Neighbours(dist, found)
