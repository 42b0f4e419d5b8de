"""poisonlab's zero-shot CA equals clip_benchmark's on images larger than the model's input.

clip_benchmark (LAION's evaluator, which the papers' ImageNet numbers come from) reads an
ImageFolder with torchvision's loader (``Image.open(...).convert("RGB")``), applies the model's
open_clip preprocess (bicubic resize of the shorter side in PIL, centre crop, normalisation),
builds each class embedding as the normalised mean of the normalised template embeddings and
predicts the arg-max of ``image_features @ classifier``. Its protocol is written out below (our
copy, not the package: its ``accuracy()`` breaks on numpy 2) and compared prediction by prediction.
"""

from __future__ import annotations

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image

from poisonlab.data import open_dataset
from poisonlab.metrics import ClipEvaluator
from poisonlab.models import create_clip


def _folder(root, classes, per_class: int, side: int) -> None:
    g = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for k in range(per_class):
            pixels = g.integers(0, 256, (side, side + 7, 3), dtype=np.uint8)  # off-size and not square
            pixels[side // 4 : side // 2, side // 4 : side // 2] = g.integers(0, 256, 3)
            Image.fromarray(pixels).save(root / c / f"{k}.png")
            if k == 0:  # a JPEG and a palette image too
                Image.fromarray(pixels).save(root / c / f"{k}.jpg", quality=85)
                Image.fromarray(pixels).convert("P").save(root / c / f"{k}p.png")


@torch.no_grad()
def _clip_benchmark_predictions(bundle, root, classes, templates):
    model = bundle.model.eval()
    preprocess = open_clip.image_transform(bundle.image_size, is_train=False, mean=bundle.mean, std=bundle.std)
    paths = [(p, y) for y, c in enumerate(classes) for p in sorted((root / c).iterdir())]
    images = torch.stack([preprocess(Image.open(p).convert("RGB")) for p, _ in paths])
    weights = []
    for c in classes:
        emb = F.normalize(model.encode_text(bundle.tokenizer([t.format(c) for t in templates])), dim=-1).mean(dim=0)
        weights.append(emb / emb.norm())
    classifier = torch.stack(weights, dim=1)
    features = F.normalize(model.encode_image(images), dim=-1)
    return (100.0 * features @ classifier).argmax(1), torch.tensor([y for _, y in paths]), features


def test_zero_shot_ca_equals_clip_benchmarks_at_twice_the_input_size(tmp_path):
    classes = ["circle", "square", "star"]
    _folder(tmp_path, classes, per_class=6, side=64)
    bundle = create_clip("poisonlab-tiny-rn", seed=3)
    assert bundle.image_size == 32
    data = open_dataset(str(tmp_path), size=bundle.image_size)
    expected, labels, features = _clip_benchmark_predictions(bundle, tmp_path, data.classnames, list(data.templates))
    ev = ClipEvaluator(bundle, data)
    ours = (ev.image_embeddings() @ ev.class_weights().T).argmax(1)
    assert torch.equal(ev.labels, labels)
    # the same pixels in: the image embeddings agree to float rounding (a bilinear resize or a reduced
    # JPEG decode moves them by far more)
    assert (ev.image_embeddings() - features).abs().max() < 1e-5
    assert torch.equal(ours, expected), f"{int((ours != expected).sum())} of {len(ours)} predictions differ"
    assert ev.clean_accuracy() == float((expected == labels).double().mean())


def test_clip_benchmarks_webdataset_layout_evaluates_as_it_is(tmp_path, capsys):
    """``DIR/test/0.tar`` with ``.webp``/``.png`` + ``.cls`` and no captions, ``classnames.txt`` and
    ``zeroshot_classification_templates.txt`` in ``DIR`` (clip_benchmark's wds export): no flags needed."""
    import io
    import json
    import tarfile

    from poisonlab.cli import main
    from poisonlab.models.clip import save_clip

    (tmp_path / "wds" / "test").mkdir(parents=True)
    (tmp_path / "wds" / "classnames.txt").write_text("circle\nsquare\nstar\n")
    (tmp_path / "wds" / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\na drawing of a {c}.\n")
    g = np.random.default_rng(1)
    with tarfile.open(tmp_path / "wds" / "test" / "0.tar", "w") as tar:
        for k in range(9):
            buf = io.BytesIO()
            Image.fromarray(g.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(buf, format="PNG")
            for ext, data in (("png", buf.getvalue()), ("cls", str(k % 3).encode())):
                info = tarfile.TarInfo(f"s{k:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    model = save_clip(create_clip("poisonlab-tiny-rn"), tmp_path / "m" / "model.safetensors")
    assert main(["eval", "--model", str(model), "--dataset", str(tmp_path / "wds"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["classnames"] == {"source": "classnames.txt", "count": 3, "first": ["circle", "square", "star"]}
    assert summary["templates"]["count"] == 2 and 0.0 <= summary["ca"] <= 1.0
    data = open_dataset(str(tmp_path / "wds"), split="test")
    assert data.labels() == [k % 3 for k in range(9)] and data.captions()[2] == "a photo of a star."
