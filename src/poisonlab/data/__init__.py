"""Datasets: embedded ``shapes`` and ``digits``, and readers for user data.

:func:`open_dataset` turns what a user types (a registered name or a path) into a dataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from braceexpand import braceexpand

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


def available() -> list[str]:
    """Names of the embedded datasets."""
    return DATASETS.available()


def shard_paths(pattern: str) -> list[Path] | None:
    """The shards a brace pattern names (``cc3m-{00000..00331}.tar``, ``a-{0..3}.tar::b.tar``),
    expanded with ``braceexpand`` as webdataset does; ``None`` when ``pattern`` is not one.

    Raises:
        InputError: a shard the pattern names does not exist.
    """
    if not pattern.endswith(".tar") or not ("{" in pattern or "::" in pattern):
        return None
    paths = [Path(p) for part in pattern.split("::") for p in braceexpand(part)]
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
            CIFAR-10 batches or ``.tar`` shards), one ``.tar`` shard, or a brace pattern of shards
            (``cc3m-{00000..00331}.tar``).
        split: ``train`` or ``test`` for the embedded and CIFAR data.
        size: image side in pixels.
        n: number of items for generated data (``None`` = the dataset's default).
        seed: generation seed for generated data.
        skip_bad: skip (and count) malformed webdataset samples instead of refusing the shard.

    Raises:
        InputError: unknown name (listing the valid ones) or a path that does not exist.
    """
    if spec in DATASETS:
        kwargs: dict[str, Any] = dict(size=size, split=split, seed=seed, **params)
        if n is not None:
            kwargs["n"] = n
        return DATASETS.create(spec, **kwargs)
    shards = shard_paths(spec)
    if shards is not None:
        dataset: ImageCaptionDataset = WebDatasetShards(shards, size=size, skip_bad=skip_bad)
        discover(dataset, shards[0].parent)
        return dataset
    path = Path(spec)
    if not path.exists():
        raise InputError(f"dataset {spec!r} is neither a known name ({', '.join(available())}) nor an existing path")
    dataset = _open_path(path, split, size, skip_bad)
    discover(dataset, path if path.is_dir() else path.parent)
    return dataset


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
