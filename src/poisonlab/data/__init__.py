"""Datasets: embedded ``shapes`` and ``digits``, and readers for user data.

:func:`open_dataset` turns what a user types (a registered name or a path) into a dataset.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

from braceexpand import UnbalancedBracesError, braceexpand

from poisonlab.data.base import (
    DATASETS,
    DEFAULT_TEMPLATES,
    ImageCaptionDataset,
    Item,
    Subset,
    TensorDataset,
)
from poisonlab.data.digits import make_digits
from poisonlab.data.readers import Cifar10Dataset, CsvDataset, FolderDataset, WebDatasetShards
from poisonlab.data.shapes import CLASSNAMES as SHAPES_CLASSNAMES
from poisonlab.data.shapes import make_shapes
from poisonlab.data.zero_shot import apply_names, discover
from poisonlab.errors import InputError
from poisonlab.utils.machine import check_fits


def available() -> list[str]:
    """Names of the embedded datasets."""
    return DATASETS.available()


MAX_SHARDS = 1_000_000
INT_RANGE = re.compile(r"\{(-?\d+)\.\.(-?\d+)(?:\.\.-?(\d+))?\}")
"""A brace pattern's integer range ``{a..b}`` or ``{a..b..step}``: ``braceexpand`` builds each
one whole before yielding, so a range of 10^8 would take gigabytes before the count is checked."""


def shard_paths(pattern: str) -> list[Path] | None:
    """The shards a brace pattern names (``cc3m-{00000..00331}.tar``, ``a-{0..3}.tar::b.tar``),
    expanded with ``braceexpand`` as webdataset does; ``None`` when ``pattern`` is not one.

    Raises:
        InputError: a shard the pattern names does not exist.
    """
    if not pattern.endswith(".tar") or not ("{" in pattern or "::" in pattern):
        return None
    for m in INT_RANGE.finditer(pattern):
        if abs(int(m[2]) - int(m[1])) // max(1, int(m[3] or 1)) + 1 > MAX_SHARDS:
            raise InputError(f"shard pattern {pattern!r}: the range {m[0]} names more than {MAX_SHARDS} shards")
    paths: list[Path] = []
    for part in pattern.split("::"):
        try:
            paths += [Path(p) for p in itertools.islice(braceexpand(part), MAX_SHARDS + 1 - len(paths))]
        except UnbalancedBracesError:
            raise InputError(f"shard pattern {pattern!r}: unbalanced braces") from None
        if len(paths) > MAX_SHARDS:
            raise InputError(f"shard pattern {pattern!r} names more than {MAX_SHARDS} shards")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"shard pattern {pattern!r}: {len(missing)} of {len(paths)} shards do not exist "
                         f"(first: {missing[0]})")
    return paths


def open_dataset(spec: str, split: str = "train", size: int = 32, n: int | None = None, seed: int = 0,
                 skip_bad: bool = False, **params: Any) -> ImageCaptionDataset:
    """Open a dataset by registered name or by path.

    Args:
        spec: ``shapes``, ``shapes-outline``, ``digits``, a ``.csv`` file, a folder (ImageFolder,
            CIFAR-10 batches or ``.tar`` shards), one ``.tar`` shard, a brace pattern of shards
            (``cc3m-{00000..00331}.tar``), or clip_benchmark's webdataset layout (``DIR/<split>/*.tar``
            with ``.cls`` labels, ``classnames.txt`` and the templates file in ``DIR``).
        split: ``train`` or ``test`` for the embedded and CIFAR data.
        size: image side in pixels.
        n: number of items for generated data (``None`` = the dataset's default).
        seed: generation seed for generated data.
        skip_bad: skip (and count) malformed webdataset samples instead of refusing the shard.

    Raises:
        InputError: unknown name (listing the valid ones) or a path that does not exist.
    """
    check_image_size(size)
    if spec in DATASETS:
        kwargs: dict[str, Any] = dict(size=size, split=split, seed=seed, **params)
        if n is not None:
            check_generated(n, size)
            kwargs["n"] = n
        return DATASETS.create(spec, **kwargs)
    shards = shard_paths(spec)
    if shards is not None:
        dataset: ImageCaptionDataset = WebDatasetShards(shards, size=size, skip_bad=skip_bad)
        discover(dataset, shards[0].parent)
        return dataset
    check_dataset(spec)
    path = Path(spec)
    wds_split = path / split
    if path.is_dir() and wds_split.is_dir() and sorted(wds_split.glob("*.tar")) and not sorted(path.glob("*.tar")):
        # clip_benchmark's webdataset layout: DIR/<split>/N.tar, classnames.txt and templates in DIR
        dataset = WebDatasetShards(sorted(wds_split.glob("*.tar")), size=size, skip_bad=skip_bad)
        discover(dataset, path)
        return dataset
    dataset = _open_path(path, split, size, skip_bad)
    discover(dataset, path if path.is_dir() else path.parent)
    return dataset


def check_dataset(spec: str) -> None:
    """``InputError`` unless ``spec`` names an embedded dataset, existing shards or an existing path
    (nothing is opened: a spec's data are checked before its first stage)."""
    if spec not in DATASETS and shard_paths(spec) is None and not Path(spec).exists():
        raise InputError(f"dataset {spec!r} is neither a known name ({', '.join(available())}) nor an existing path")


MAX_IMAGE_SIZE = 4096


def check_image_size(size: int) -> None:
    """``InputError`` unless ``size`` is an image side poisonlab can decode to (1 to 4096 pixels)."""
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_IMAGE_SIZE:
        raise InputError(f"image size {size} is not a side in pixels from 1 to {MAX_IMAGE_SIZE}")


def check_generated(n: int, size: int) -> None:
    """``InputError`` unless ``n`` generated ``size``-pixel images fit in half of this machine's memory
    (checked before any is drawn)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"--n must be a positive number of items, got {n}")
    check_fits(n * 3 * size * size, f"--n {n} images of {size}x{size} pixels")


def _open_path(path: Path, split: str, size: int, skip_bad: bool) -> ImageCaptionDataset:
    if path.is_file() and path.suffix == ".csv":
        return CsvDataset(path, size=size)
    if path.is_file() and path.suffix == ".tar":
        return WebDatasetShards([path], size=size, skip_bad=skip_bad)
    if path.is_dir():
        if (path / "batches.meta").exists() or (path / "test_batch").exists():
            return Cifar10Dataset(path, split=split, size=size)
        tar_files = sorted(path.glob("*.tar"))
        if tar_files:
            return WebDatasetShards(tar_files, size=size, skip_bad=skip_bad)
        return FolderDataset(path, size=size)
    raise InputError(f"dataset path {str(path)!r} is not a .csv, a .tar shard or a folder")


__all__ = [
    "DATASETS", "DEFAULT_TEMPLATES", "SHAPES_CLASSNAMES", "Cifar10Dataset", "CsvDataset", "FolderDataset",
    "ImageCaptionDataset", "Item", "Subset", "apply_names", "TensorDataset", "WebDatasetShards", "available", "make_digits",
    "make_shapes", "open_dataset", "shard_paths",
]
