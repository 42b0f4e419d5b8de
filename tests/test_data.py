from __future__ import annotations

import io
import pickle
import tarfile

import numpy as np
import pytest
import torch
from conftest import write_png

from poisonlab.data import CsvDataset, open_dataset
from poisonlab.data.shapes import CAPTION_TEMPLATES, CLASSNAMES, COLORS
from poisonlab.errors import InputError


def test_shapes_is_deterministic_and_varied():
    a = open_dataset("shapes", n=64, seed=3)
    b = open_dataset("shapes", n=64, seed=3)
    c = open_dataset("shapes", n=64, seed=4)
    assert torch.equal(a.images, b.images) and a.captions() == b.captions()
    assert not torch.equal(a.images, c.images)
    assert len(set(a.labels())) >= 8
    test = open_dataset("shapes", n=64, seed=3, split="test")
    assert not torch.equal(a.images, test.images)
    assert len(CLASSNAMES) >= 10 and len(COLORS) >= 8 and len(CAPTION_TEMPLATES) >= 5


def test_shapes_captions_name_colour_and_class():
    d = open_dataset("shapes", n=50)
    for _, caption, label in (d[i] for i in range(50)):
        assert CLASSNAMES[label] in caption
        assert any(color in caption for color in COLORS)


@pytest.mark.parametrize("size", [32, 64, 224])
def test_shapes_sizes(size):
    d = open_dataset("shapes", n=3, size=size)
    image, _, _ = d[0]
    assert image.shape == (3, size, size) and 0 <= image.min() and image.max() <= 1


def test_outline_style_differs_visibly():
    solid = open_dataset("shapes", n=200, seed=1)
    outline = open_dataset("shapes-outline", n=200, seed=1)
    assert solid.classnames == outline.classnames
    # outline backgrounds are smooth stripes: far less pixel-to-pixel noise than solid ones
    def roughness(d):
        x = d.images.float()
        return (x[..., 1:] - x[..., :-1]).abs().mean()
    assert roughness(outline) < 0.7 * roughness(solid)


def test_digits():
    train, test = open_dataset("digits", split="train"), open_dataset("digits", split="test")
    assert len(train) + len(test) == 1797
    image, caption, label = train[0]
    assert image.shape == (3, 32, 32) and caption == f"a photo of the digit {train.classnames[label]}."


def test_csv_reader(tmp_path):
    write_png(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    write_png(tmp_path / "sub" / "b.png", rgb=(0, 0, 255))
    (tmp_path / "data.csv").write_text("path,caption,label\na.png,a red thing,cat\nsub/b.png,a blue thing,dog\n")
    d = CsvDataset(tmp_path / "data.csv", size=16)
    assert len(d) == 2 and d.classnames == ["cat", "dog"]
    image, caption, label = d[1]
    assert image.shape == (3, 16, 16) and caption == "a blue thing" and label == 1
    assert image[2].mean() > image[0].mean()


def test_csv_reader_errors_name_the_row(tmp_path):
    write_png(tmp_path / "a.png")
    (tmp_path / "missing.csv").write_text("a.png,ok\nnope.png,missing\n")
    with pytest.raises(InputError, match="row 2"):
        CsvDataset(tmp_path / "missing.csv")
    (tmp_path / "bad.png").write_text("not an image")
    (tmp_path / "bad.csv").write_text("a.png,ok\nbad.png,broken\n")
    d = CsvDataset(tmp_path / "bad.csv")
    with pytest.raises(InputError, match="row 2"):
        d[1]


def test_image_folder(tmp_path):
    for cls in ("ice_cream", "zebra"):
        (tmp_path / cls).mkdir()
        for k in range(2):
            write_png(tmp_path / cls / f"{k}.png")
    d = open_dataset(str(tmp_path))
    assert d.classnames == ["ice cream", "zebra"] and d.labels() == [0, 0, 1, 1]
    assert d[0][1] == "a photo of a ice cream."


def _cifar_batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}


def test_cifar_batches(tmp_path):
    for name, n in [("data_batch_1", 5), ("test_batch", 3)]:
        with open(tmp_path / name, "wb") as f:
            pickle.dump(_cifar_batch(n, 0), f)
    with open(tmp_path / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    train = open_dataset(str(tmp_path), split="train")
    test = open_dataset(str(tmp_path), split="test")
    assert len(train) == 5 and len(test) == 3 and train.classnames[3] == "c3"
    ref = _cifar_batch(5, 0)[b"data"].reshape(5, 3, 32, 32)
    assert torch.equal(train.images, torch.from_numpy(ref))


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar_refuses_arbitrary_pickles(tmp_path):
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": []}, f)
    with pytest.raises(InputError, match="refusing"):
        open_dataset(str(tmp_path), split="test")


def test_webdataset_shards(tmp_path):
    with tarfile.open(tmp_path / "shard-0.tar", "w") as tar:
        for k in range(3):
            write_png(tmp_path / "x.png")
            for ext, data in [("png", (tmp_path / "x.png").read_bytes()), ("txt", f"caption {k}".encode()), ("cls", str(k).encode())]:
                info = tarfile.TarInfo(f"{k:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (tmp_path / "x.png").unlink()
    d = open_dataset(str(tmp_path))
    assert len(d) == 3 and d[2][1:] == ("caption 2", 2) and d[0][0].shape == (3, 32, 32)


def test_bad_specs(tmp_path):
    with pytest.raises(InputError, match="shapes"):
        open_dataset("no-such-data")
    with pytest.raises(InputError):
        open_dataset(str(tmp_path / "missing-folder"))
    with pytest.raises(InputError):
        open_dataset("shapes", n=0)
