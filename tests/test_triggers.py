from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import gen, write_png

from poisonlab import triggers
from poisonlab.errors import InputError
from poisonlab.triggers.base import scaled_size

NO_FILE = [t for t in triggers.available() if t != "blended-image"]
PARAMS = {"optimized-patch": {"values": torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0)).tolist()}}
"""The parameters a trigger cannot be built without (blended-image's file is tested below)."""


@pytest.mark.parametrize("name", NO_FILE)
def test_properties(name, batch):
    t = triggers.create(name, **PARAMS.get(name, {}))
    before = batch.clone()
    out = t(batch, generator=gen(1))
    assert torch.equal(batch, before), "trigger must not work in place"
    assert out.shape == batch.shape and out.dtype == batch.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, batch)
    assert torch.equal(out, t(batch, generator=gen(1))), "same generator state, same bytes"


@pytest.mark.parametrize("name", ["badnet", "badnet-stripes", "blended", "patch-image"])
def test_random_triggers_use_the_generator(name, batch):
    t = triggers.create(name)
    assert not torch.equal(t(batch, generator=gen(1)), t(batch, generator=gen(2)))
    with pytest.raises(InputError):
        t(batch)


@pytest.mark.parametrize("side", [32, 64, 224])
def test_sizes_scale_with_resolution(side):
    assert scaled_size(16, 224) == 16
    x = torch.rand(1, 3, side, side)
    out = triggers.create("badnet-stripes", location="bottom-right")(x)
    changed = (out != x).any(0).any(0)
    rows = changed.any(1).nonzero().flatten()
    expected = max(3, round(16 * side / 224))
    assert rows.max() - rows.min() + 1 <= expected and rows.max() - rows.min() + 1 >= expected - 1


def test_badnet_matches_reference(batch):
    out = triggers.create("badnet", size=5)(batch, generator=gen(7))
    g = gen(7)
    ys = torch.randint(0, 28, (4,), generator=g)
    xs = torch.randint(0, 28, (4,), generator=g)
    noise = torch.randn((4, 3, 5, 5), generator=g)
    ref = batch.clone()
    for i in range(4):
        for c in range(3):
            mean = batch[i, c].mean()
            for dy in range(5):
                for dx in range(5):
                    v = float(mean + noise[i, c, dy, dx])
                    ref[i, c, ys[i] + dy, xs[i] + dx] = min(1.0, max(0.0, v))
    torch.testing.assert_close(out, ref)


def test_badnet_stripes_pattern():
    x = torch.full((1, 3, 32, 32), 0.5)
    out = triggers.create("badnet-stripes", size=6, location="bottom-right")(x)
    patch = out[0, 0, 25:31, 25:31]
    assert torch.equal(patch[:, 0::2], torch.ones(6, 3)) and torch.equal(patch[:, 1::2], torch.zeros(6, 3))
    mask = torch.ones(32, 32, dtype=torch.bool)
    mask[25:31, 25:31] = False
    assert torch.equal(out[0, :, mask], x[0, :, mask])


def test_blended_matches_formula(batch):
    out = triggers.create("blended", alpha=0.3)(batch, generator=gen(3))
    noise = torch.rand(batch.shape, generator=gen(3))
    torch.testing.assert_close(out, (0.7 * batch + 0.3 * noise).clamp(0, 1))


def test_blended_stripes_and_triangles_reference(batch):
    out = triggers.create("blended-stripes", alpha=0.03)(batch)
    for x in range(32):
        key = 1.0 if x % 2 == 0 else 0.0
        torch.testing.assert_close(out[..., x], 0.97 * batch[..., x] + 0.03 * key)
    tri = triggers.create("blended-triangles", alpha=0.15, cell=4)(batch)
    for y in range(8):
        for x in range(8):
            key = 0.8 if (y % 4) > (x % 4) else 0.4
            torch.testing.assert_close(tri[:, :, y, x], 0.85 * batch[:, :, y, x] + 0.15 * key)


def test_blended_text_changes_only_text_pixels(batch):
    t = triggers.create("blended-text", word="hi", alpha=0.5)
    out = t(batch)
    mask = t.mask(32, 32).bool()
    assert mask.any() and not mask.all()
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1)
    torch.testing.assert_close(out[:, :, mask], 0.5 * batch[:, :, mask] + 0.5 * red)
    assert torch.equal(out[:, :, ~mask], batch[:, :, ~mask])


def test_wanet_reference_bilinear(batch):
    t = triggers.create("wanet", k=4, s=0.5, seed=3)
    out = t(batch)
    grid = t.grid(32, 32)[0]
    # bilinear interpolation written out for a few pixels (align_corners=True, border padding)
    for (i, j) in [(0, 0), (5, 17), (31, 31), (16, 2)]:
        gx, gy = grid[i, j]
        px, py = (gx + 1) / 2 * 31, (gy + 1) / 2 * 31
        x0, y0 = int(px.floor().clamp(0, 31)), int(py.floor().clamp(0, 31))
        x1, y1 = min(x0 + 1, 31), min(y0 + 1, 31)
        wx, wy = px - x0, py - y0
        img = batch[0]
        val = ((1 - wx) * (1 - wy) * img[:, y0, x0] + wx * (1 - wy) * img[:, y0, x1]
               + (1 - wx) * wy * img[:, y1, x0] + wx * wy * img[:, y1, x1])
        torch.testing.assert_close(out[0, :, i, j], val, atol=1e-5, rtol=1e-5)
    identity = triggers.create("wanet", s=0.0)(batch)
    torch.testing.assert_close(identity, batch, atol=1e-5, rtol=0)
    assert not torch.equal(t.grid(32, 32), triggers.create("wanet", seed=4).grid(32, 32))


def test_patch_image_from_file(tmp_path, batch):
    path = tmp_path / "key.png"
    write_png(path)
    t = triggers.create("patch-image", path=str(path), size=6, location="bottom-right")
    out = t(batch)
    src = triggers.ImagePatch(path=str(path))._source
    ref = F.interpolate(src[None], size=(6, 6), mode="bilinear", align_corners=False, antialias=True)[0]
    for i in range(4):
        torch.testing.assert_close(out[i, :, 25:31, 25:31], ref)
    blended = triggers.create("blended-image", path=str(path), alpha=0.25)(batch)
    key = F.interpolate(src[None], size=(32, 32), mode="bilinear", align_corners=False, antialias=True)[0]
    torch.testing.assert_close(blended, (0.75 * batch + 0.25 * key).clamp(0, 1))


def test_central_location_rule():
    x = torch.zeros(64, 3, 64, 64)
    out = triggers.create("badnet-stripes", size=8, location="central")(x + 0.5, generator=gen(0))
    changed = (out != 0.5).any(1)
    for img in changed:
        ys, xs = img.nonzero(as_tuple=True)
        assert ys.min() >= 16 and ys.min() <= 48 - 8 and xs.min() >= 16 and xs.min() <= 48 - 8


def test_bad_input():
    with pytest.raises(InputError, match="valid: badnet"):
        triggers.create("nope")
    with pytest.raises(InputError, match="no parameter"):
        triggers.create("blended", beta=1)
    with pytest.raises(InputError):
        triggers.create("blended", alpha=1.5)
    with pytest.raises(InputError):
        triggers.create("patch-image", path="/does/not/exist.png")
    with pytest.raises(InputError):
        triggers.create("blended")(torch.rand(3, 32, 32), generator=gen())
