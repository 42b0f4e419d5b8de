"""Pivotal Tuning with the latent term as poisonlab defines it and as the authors' later code does.

poisonlab's ``latent_loss`` is scale-free: the mean squared cosine between *different* class
centroids plus the mean alignment of inter-centroid directions with the pivot's. The same lab's
later code instead takes the Frobenius norm of the centroids' feature covariance with the
diagonal *vector* subtracted from every row, plus the alignment *summed* over class pairs. This
script re-implements that published form here (for comparison only; it is not shipped) and runs
both without the accuracy floor, so the whole budget is spent, on the same suspect and trusted
set as ``repair_grid.py``.

Usage: python benchmarks/pivotal_variants.py [--trigger badnet] [--runs 2000:1e-4 500:1e-3]
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from repair_grid import TRIGGERS, suspect

from poisonlab import defenses, triggers
from poisonlab.data import open_dataset
from poisonlab.defenses import pivotal
from poisonlab.metrics.classifier_eval import ClassifierEvaluator
from poisonlab.train.data import label_tensors


def published_latent(z: torch.Tensor, z_pivot: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The authors' form: ||C^T C / K - diag broadcast||_F + sum over pairs of direction cosines."""
    classes = labels.unique()
    if len(classes) < 2:
        return z.sum() * 0.0
    c = pivotal.class_centroids(z.flatten(1), labels, classes)
    p = pivotal.class_centroids(z_pivot.flatten(1), labels, classes)
    cov = c.T @ c / len(c)
    orthogonality = (cov - torch.diag(cov)).norm()
    i, j = torch.triu_indices(len(c), len(c), offset=1)
    return orthogonality + F.cosine_similarity(c[i] - c[j], p[i] - p[j], dim=-1).sum()


@contextmanager
def latent_form(name: str):
    original = pivotal.latent_loss
    pivotal.latent_loss = published_latent if name == "published" else original
    try:
        yield
    finally:
        pivotal.latent_loss = original


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trigger", default="badnet", choices=sorted(TRIGGERS))
    p.add_argument("--runs", nargs="+", default=["2000:1e-4", "500:1e-3", "500:3e-3"], metavar="STEPS:LR")
    p.add_argument("--cache", type=Path, default=Path("bench-out"))
    a = p.parse_args()
    a.cache.mkdir(exist_ok=True)
    model = suspect(a.trigger, a.cache)
    ev = ClassifierEvaluator(model, open_dataset("shapes", split="test", n=1000))
    trig = triggers.create(a.trigger, **TRIGGERS[a.trigger])
    pool = label_tensors(open_dataset("shapes", n=10000, seed=5))
    trusted = pool.subset(defenses.trusted_indices(len(pool), 0.01, 0))

    def row(tag: str, clf: object) -> None:
        e = ev.with_model(clf)
        b = e.backdoor(trig, "star")
        print(f"| {tag} | {100 * e.clean_accuracy():.1f} | {100 * b['asr']:.1f} | {100 * b['arr']:.1f} |", flush=True)

    print("| latent term, steps, lr | CA | ASR | ARR |\n|---|---|---|---|")
    row("suspect", model)
    for form in ("poisonlab", "published"):
        for run in a.runs:
            steps, lr = run.split(":")
            with latent_form(form):
                res = defenses.create("pivotal-tuning", family="classifier", steps=int(steps), lr=float(lr), check_every=0).run(
                    model, trusted)
            row(f"{form}, {steps}, {lr}", res.model)


if __name__ == "__main__":
    main()
