"""CTI's perturbation budget: the model score of each classifier at several L2 radii.

Usage: python benchmarks/cti_radius.py --rms 0.03,0.06,0.1,0.15 CKPT [CKPT ...]
       [--dataset shapes --n 10000 --share 0.01 --seed 5]

Each checkpoint is repaired once with Pivotal Tuning (CTI's calibration model), then scored at
every radius; the embedded triggers' own L2 norms are printed for scale.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from poisonlab import triggers
from poisonlab.data import open_dataset
from poisonlab.data.base import trusted_indices
from poisonlab.defenses.pivotal import PivotalTuning
from poisonlab.detect.cti import CalibratedTriggerInversion
from poisonlab.models.classifier import load_classifier
from poisonlab.train.data import label_tensors

TRIGGERS = [("badnet", {"size": 4, "location": "bottom-right"}), ("blended", {"alpha": 0.2})]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--rms", default="0.03,0.06,0.1,0.15")
    p.add_argument("--dataset", default="shapes")
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--share", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=5)
    a = p.parse_args()
    data = label_tensors(open_dataset(a.dataset, n=a.n, seed=a.seed, size=32))
    trusted = data.subset(trusted_indices(len(data), a.share, a.seed))
    x = data.images[:200].float() / 255
    for name, params in TRIGGERS:
        moved = triggers.create(name, **params)(x, torch.Generator().manual_seed(0)) - x
        print(f"{name} trigger: mean L2 {float(moved.flatten(1).norm(dim=1).mean()):.2f}")
    radii = [float(v) for v in a.rms.split(",")]
    for path in a.checkpoints:
        start = time.perf_counter()
        suspect = load_classifier(path)
        torch.manual_seed(0)
        repaired = PivotalTuning(check_every=0).run(suspect, trusted).model
        cells = []
        for rms in radii:
            torch.manual_seed(0)
            found = CalibratedTriggerInversion(max_rms=rms)(suspect, trusted, repaired=repaired)
            cells.append(f"rms {rms}: {found.score:.2f} (class {found.details['suspected_target']})")
        print(f"{path}: " + " | ".join(cells) + f"  [{time.perf_counter() - start:.0f} s]")


if __name__ == "__main__":
    main()
