"""Write a poisoned dataset to disk in a format its readers open again.

- Webdataset shards in, webdataset shards out (:func:`write_shards`): each shard is copied
  member by member while it is read, so the set is never held in memory; a clean sample's
  members are copied byte for byte, a poisoned one gets its planned caption / label and, when
  the plan changes its pixels, the poisoned image re-encoded losslessly as PNG (at the side the
  plan was made at, so reading it back at that side gives exactly the planned pixels).
- Anything else (:func:`write_csv`): ``images/NNNNNN.png`` and ``data.csv`` (``path,caption,label``).
"""

from __future__ import annotations

import csv
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import torchvision.utils as vutils

from poisonlab.attacks.plan import PoisonedDataset, PoisonEntry
from poisonlab.data.readers import IMAGE_EXTS, WebDatasetShards, split_member
from poisonlab.utils.io import atomic_write


def materialize(dataset: PoisonedDataset, out: Path) -> Path:
    """Write ``dataset`` under ``out`` (shards for shard input, PNGs + CSV otherwise); returns
    the path to pass as ``--dataset``."""
    if isinstance(dataset.base, WebDatasetShards):
        return write_shards(dataset, dataset.base, out / "shards")
    return write_csv(dataset, out)


def write_csv(dataset: PoisonedDataset, out: Path) -> Path:
    """``out/images/NNNNNN.png`` and ``out/data.csv``; returns the CSV's path."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "caption", "label"])
    names = dataset.classnames
    for i in range(len(dataset)):
        image, caption, label = dataset[i]
        name = f"images/{i:06d}.png"
        vutils.save_image(image, out / name)
        writer.writerow([name, caption, names[label] if names and label >= 0 else ("" if label < 0 else label)])
    with atomic_write(out / "data.csv", "w") as f:
        f.write(buf.getvalue())
    return out / "data.csv"


def _png(dataset: PoisonedDataset, index: int) -> bytes:
    buf = io.BytesIO()
    vutils.save_image(dataset[index][0], buf, format="png")
    return buf.getvalue()


def _member(name: str, data: bytes, like: tarfile.TarInfo) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), like.mtime, like.mode
    return info, io.BytesIO(data)


def _poisoned_members(dataset: PoisonedDataset, index: int, entry: PoisonEntry, key: str,
                      members: list[tuple[tarfile.TarInfo, bytes]]) -> list[tuple[tarfile.TarInfo, io.BytesIO]]:
    """The members of a poisoned sample: planned caption / label, re-encoded image if it changed."""
    new_image = entry.image_from is not None or (dataset.trigger is not None and entry.triggered)
    out = []
    for info, data in members:
        _, ext = split_member(info.name)
        if new_image and ext in IMAGE_EXTS:
            continue
        if ext == "txt" and entry.caption is not None:
            data = entry.caption.encode("utf-8")
        elif ext == "cls" and entry.label is not None:
            data = str(entry.label).encode()
        out.append(_member(info.name, data, info))
    if new_image:
        out.insert(0, _member(f"{key}.png", _png(dataset, index), members[0][0]))
    return out


def _samples(tar: tarfile.TarFile) -> Iterator[tuple[str, list[tuple[tarfile.TarInfo, bytes]]]]:
    """``(key, members)`` of each sample, read in order (a sample's members are contiguous)."""
    current: str | None = None
    members: list[tuple[tarfile.TarInfo, bytes]] = []
    for info in tar:
        if not info.isfile():
            continue
        key, _ = split_member(info.name)
        if key != current and members:
            yield current, members  # type: ignore[misc]
            members = []
        current = key
        members.append((info, tar.extractfile(info).read()))  # type: ignore[union-attr]
    if members:
        yield current, members  # type: ignore[misc]


def write_shards(dataset: PoisonedDataset, shards: WebDatasetShards, out: Path) -> Path:
    """One poisoned shard per input shard, same names, under ``out``; returns ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    poisoned = {(shards.samples[i].shard, shards.samples[i].key): i for i in dataset.entries}
    for si, src in enumerate(shards.shards):
        tmp = out / f".{src.name}.tmp"
        with tarfile.open(src, "r:") as tin, tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tout:
            for key, members in _samples(tin):
                index = poisoned.get((si, key))
                if index is None:
                    written = [(info, io.BytesIO(data)) for info, data in members]
                else:
                    written = _poisoned_members(dataset, index, dataset.entries[index], key, members)
                for info, fobj in written:
                    tout.addfile(info, fobj)
        os.replace(tmp, out / src.name)
    return out
