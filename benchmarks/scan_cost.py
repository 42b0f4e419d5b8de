"""What a ``poisonlab scan`` costs on a real-size CLIP, against the model's own forward + backward.

Each scan detector (``poisonlab.detect.scan.FEATURES``) runs a few optimisation steps on a batch of
``--images`` inputs; the peer, measured in the same run, is one forward + backward pass of the
zero-shot classifier through the same batch. The script prints, per detector, its seconds per image
per step against the peer's (the ratio: what the detector adds beyond the model's own passes), and
the seconds a scan at its default budgets would take (:data:`IMAGE_STEPS` x the measured seconds
per image-step: a projection from the measured steps, labelled as one).

    python benchmarks/scan_cost.py --model RN50                    # random weights: the cost only
    python benchmarks/scan_cost.py --model RN50 --pretrained openai --classnames imagenet1k
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from poisonlab.data import open_dataset
from poisonlab.data.zero_shot import classnames_from, templates_from
from poisonlab.detect import DETECTORS
from poisonlab.detect.scan import DEFAULT_PARAMS, FEATURES
from poisonlab.models import create_clip
from poisonlab.models.classifier import ZeroShotClassifier
from poisonlab.train.data import label_tensors
from poisonlab.train.dist import default_device

IMAGE_STEPS = {"decree": 200 * 64, "target-probe": 5 * 100 * 64, "max-margin": 100 * 64 * 4}
"""Images through forward + backward in a scan at its defaults (``detect/scan.py`` over the detectors'
own): DECREE 200 steps x 64 images; the probe 5 places x 100 steps x 64 fitting images; MM-BD 100
steps x 64 classes x 4 starts."""


def peer_seconds(model: Any, images: torch.Tensor, repeats: int = 3) -> float:
    """One forward + backward of the zero-shot classifier through ``images`` (best of ``repeats``)."""
    x = images.float().div(255).to(model.device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        x.requires_grad_(True)
        model.logits(x).logsumexp(1).sum().backward()
        x = x.detach()
        if x.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="RN50")
    ap.add_argument("--pretrained", default=None)
    ap.add_argument("--classnames", default="imagenet1k")
    ap.add_argument("--images", type=int, default=32, help="clean images per detector batch")
    ap.add_argument("--steps", type=int, default=3, help="optimisation steps measured per detector")
    args = ap.parse_args()
    device = default_device()
    bundle = create_clip(args.model, pretrained=args.pretrained, device=device)
    names = classnames_from(args.classnames)[0]
    start = time.perf_counter()
    zs = ZeroShotClassifier(bundle, names, templates_from("simple")[0])
    head = time.perf_counter() - start
    data = label_tensors(open_dataset("shapes", split="test", n=2 * args.images, seed=7, size=bundle.image_size),
                         bundle.image_size)
    peer = peer_seconds(zs, data.images[: args.images])
    rows = {}
    n, steps = args.images, args.steps
    runs = {"decree": (dict(steps=steps, images=n), steps * n),
            "target-probe": (dict(steps=steps, images=2 * n, locations=["bottom-right"]), steps * n),
            "max-margin": (dict(steps=steps, starts=1, max_classes=n), steps * n)}
    for name in FEATURES:
        params, image_steps = runs[name]
        detector = DETECTORS.create(name, **{**DEFAULT_PARAMS.get(name, {}), **params})
        start = time.perf_counter()
        detector(zs, data, **({"candidates": list(range(n))} if name == "max-margin" else {}))
        took = time.perf_counter() - start
        per_image_step = took / image_steps
        rows[name] = {"measured_s": round(took, 2), "image_steps": image_steps,
                      "ratio_to_peer": round(per_image_step / (peer / n), 2),
                      "projected_default_s": round(per_image_step * IMAGE_STEPS[name], 1)}
    print(json.dumps({"model": args.model, "pretrained": args.pretrained, "device": str(device),
                      "threads": torch.get_num_threads(), "image_size": bundle.image_size, "classes": len(names),
                      "images": args.images, "zero_shot_head_s": round(head, 2),
                      "peer_forward_backward_s": round(peer, 3), "detectors": rows}, indent=1))


if __name__ == "__main__":
    main()
