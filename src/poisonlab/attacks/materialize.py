"""Write a poisoned dataset to disk in a format its readers open again.

- Webdataset shards in, webdataset shards out (:func:`write_shards`, with webdataset's
  ``TarWriter``): each shard is copied sample by sample while it is read, so the set is never
  held in memory; a clean sample's members are copied byte for byte, a poisoned one gets its planned caption / label and, when
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
from webdataset import TarWriter

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


def _poisoned_sample(dataset: PoisonedDataset, index: int, entry: PoisonEntry, key: str,
                     members: dict[str, bytes]) -> dict[str, bytes]:
    """The members of a poisoned sample by extension: planned caption / label, and the image
    re-encoded as PNG when the plan changed its pixels."""
    out = dict(members)
    if entry.image_from is not None or (dataset.trigger is not None and entry.triggered):
        for ext in [e for e in out if e in IMAGE_EXTS]:
            del out[ext]
        out["png"] = _png(dataset, index)
    if "txt" in out and entry.caption is not None:
        out["txt"] = entry.caption.encode("utf-8")
    if "cls" in out and entry.label is not None:
        out["cls"] = str(entry.label).encode()
    return out


def _samples(tar: tarfile.TarFile) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: bytes})`` of each sample, read in order (a sample's members are contiguous)."""
    current: str | None = None
    members: dict[str, bytes] = {}
    for info in tar:
        if not info.isfile():
            continue
        key, ext = split_member(info.name)
        if key != current and members:
            yield current, members  # type: ignore[misc]
            members = {}
        current = key
        members[ext] = tar.extractfile(info).read()  # type: ignore[union-attr]
    if members:
        yield current, members  # type: ignore[misc]


def write_shards(dataset: PoisonedDataset, shards: WebDatasetShards, out: Path) -> Path:
    """One poisoned shard per input shard, same names, under ``out``, written with webdataset's
    ``TarWriter`` (so ``webdataset.WebDataset`` and open_clip_train read them with the same keys);
    returns ``out``. Member times are 0, so the same plan and data give the same bytes."""
    out.mkdir(parents=True, exist_ok=True)
    poisoned = {(shards.samples[i].shard, shards.samples[i].key): i for i in dataset.entries}
    for si, src in enumerate(shards.shards):
        tmp = out / f".{src.name}.tmp"
        with tarfile.open(src, "r:") as tin, open(tmp, "wb") as f, \
                TarWriter(f, encoder=False, mtime=0, user="poisonlab", group="poisonlab") as tout:
            for key, members in _samples(tin):
                index = poisoned.get((si, key))
                if index is not None:
                    members = _poisoned_sample(dataset, index, dataset.entries[index], key, members)
                tout.write({"__key__": key, **members})
        os.replace(tmp, out / src.name)
    return out
