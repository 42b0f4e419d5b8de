"""Target-class probe: which class does a small universal patch pull clean images into?

After InverTune (Sun et al., 2025; ``Goodman-liyu/InverTune`` ``TargetLabel.py``): a universal
adversarial patch covering about 3% of the image, pasted near a corner, is applied to clean
images and each class's share of the zero-shot predictions is compared with its share on the
clean images. A backdoor is a shortcut into its target class, so on a backdoored model the
untargeted patch drifts there and the target's share jumps; on a clean model the gain spreads
over several classes or stays small.

InverTune trains its patch with a generator network and reads the class of largest gain. Here the
patch is optimised directly (Adam on its pixels, away from each image's clean prediction: the
negative cross-entropy), at each of ``locations`` in turn (a trigger learned at one place need
not fire at another), on one half of the images and measured on the other half, so the share is
that of a *universal* patch. The score is the largest share gain of any class at any location;
the suspected target is that class.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from poisonlab.detect.base import DETECTORS, Detection
from poisonlab.errors import InputError
from poisonlab.models.protocols import Classifier, frozen
from poisonlab.train.data import LabelTensors
from poisonlab.triggers.base import paste_at, scaled_size
from poisonlab.utils.seeding import make_generator

LOCATIONS = ("bottom-right", "top-left", "top-right", "bottom-left", "center")


def patch_box(location: str, size: int, side: int, margin: int) -> tuple[int, int]:
    """Top-left corner ``(row, col)`` of a ``side`` patch at ``location`` of a ``size`` image,
    ``margin`` pixels from the edges (InverTune: 14 px at 224)."""
    far, near, mid = size - margin - side, margin, (size - side) // 2
    corners = {"bottom-right": (far, far), "top-left": (near, near), "top-right": (near, far),
               "bottom-left": (far, near), "center": (mid, mid)}
    if location not in corners:
        raise InputError(f"unknown patch location {location!r} (one of {', '.join(corners)})")
    return corners[location]


def paste(x: torch.Tensor, patch: torch.Tensor, row: int, col: int) -> torch.Tensor:
    """``x`` with ``patch`` (``[C, s, s]``) overwriting the pixels at ``(row, col)`` of every image
    (:func:`~poisonlab.triggers.base.paste_at`, the patch triggers' pasting)."""
    return paste_at(x, patch, torch.full((len(x),), row), torch.full((len(x),), col))


def share(preds: torch.Tensor, k: int) -> torch.Tensor:
    """Each class's share ``[k]`` of the predictions."""
    return torch.bincount(preds, minlength=k).double() / max(len(preds), 1)


@DETECTORS.register("target-probe")
@dataclass(frozen=True)
class TargetClassProbe:
    """Universal-patch target probe on a model with ``logits`` (a CLIP zero-shot head or a classifier).

    Args:
        area: the patch's share of the image area (InverTune: 0.03).
        locations: where the patch is tried (of ``bottom-right``, ``top-left``, ``top-right``,
            ``bottom-left``, ``center``).
        steps, lr: Adam on the patch pixels, per location.
        images: clean images drawn (half to optimise on, half to measure).
        threshold: the verdict's share gain (uncalibrated; ``poisonlab scan`` calibrates).
    """

    family: ClassVar[str] = "clip"
    kind: ClassVar[str] = "detector"

    area: float = 0.03
    locations: tuple[str, ...] = LOCATIONS
    steps: int = 100
    lr: float = 0.05
    images: int = 128
    threshold: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.area < 1:
            raise InputError(f"patch area must be in (0, 1), got {self.area}")
        if self.images < 2 or self.steps < 0 or not self.locations:
            raise InputError("the probe needs at least 2 images, steps >= 0 and a location")

    def optimise(self, model: Classifier, x: torch.Tensor, row: int, col: int, side: int) -> torch.Tensor:
        """The patch ``[C, side, side]`` that pushes ``x`` away from its clean predictions."""
        with torch.no_grad():
            clean = model.logits(x).argmax(1)
        g = make_generator("target-probe", self.seed, row, col)
        patch = torch.rand((x.shape[1], side, side), generator=g).to(x.device).requires_grad_(True)
        opt = torch.optim.Adam([patch], lr=self.lr)
        for _ in range(self.steps):
            loss = -F.cross_entropy(model.logits(paste(x, patch, row, col)), clean)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                patch.clamp_(0, 1)
        return patch.detach()

    def __call__(self, model: Classifier, data: LabelTensors) -> Detection:
        """Score ``model`` with clean images ``data`` (labels unused)."""
        g = make_generator("target-probe-images", self.seed)
        idx = torch.randperm(len(data), generator=g)[: self.images]
        if len(idx) < 2:
            raise InputError("the target-class probe needs at least 2 images")
        x = (data.images[idx].float() / 255.0).to(model.device)
        fit, held = x[: len(x) // 2], x[len(x) // 2 :]
        size, k = x.shape[-1], model.num_classes
        side = max(1, round((self.area * size * size) ** 0.5))
        margin = scaled_size(14, size, minimum=0)
        best: dict[str, Any] = {"gain": -1.0}
        with frozen(model.module):
            with torch.no_grad():
                before = share(model.logits(held).argmax(1), k)
            for location in self.locations:
                row, col = patch_box(location, size, side, margin)
                patch = self.optimise(model, fit, row, col, side)
                with torch.no_grad():
                    after = share(model.logits(paste(held, patch, row, col)).argmax(1), k)
                gains = after - before
                top = int(gains.argmax())
                if float(gains[top]) > best["gain"]:
                    best = {"gain": float(gains[top]), "target": top, "location": location, "share": float(after[top]),
                            "gains": gains.tolist(), "patch": paste(torch.zeros_like(x[:1]), patch, row, col)[0].cpu()}
        det = Detection("target-probe", best["gain"], self.threshold,
                        {"suspected_target": best["target"], "location": best["location"], "target_share": best["share"],
                         "params": asdict(self)})
        det.internals["gains"] = best["gains"]
        det.trigger = best["patch"]
        return det
