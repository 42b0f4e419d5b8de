"""poisonlab's k-distance, SLOF and DAO against Huang et al.'s released detectors on the same
embeddings (docs/results/detectors.md, "Equal to the authors' code").

Writes one embedding file (512 pairs of 64-d image and caption embeddings, 8 of them a planted far
cluster), runs the authors' ``KDistanceDetector``, ``SLOFDetector`` and ``DAODetector`` (k = 16) from a
checkout of HanxunH/Detect-CLIP-Backdoor-Samples on it as one batch, with and without the captions,
and poisonlab's ``mode=authors`` (one batch of everything) and ``mode=corrected``; prints the largest
absolute and relative differences and the AUROC of the planted cluster for each.

    python benchmarks/detectors_vs_authors.py --authors-repo /path/to/Detect-CLIP-Backdoor-Samples \\
        [--out embeddings.npz]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from poisonlab.metrics.local_outliers import SCORES, Reference, score_items


class Identity:
    """A "model" whose embeddings are its inputs, so the authors' detectors score given embeddings."""

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def encode_text(self, t: torch.Tensor) -> torch.Tensor:
        return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors-repo", required=True)
    parser.add_argument("--out", default=None, help="Also save the embeddings here (.npz).")
    args = parser.parse_args()
    sys.path.insert(0, args.authors_repo)
    from backdoor_sample_detector import DAODetector, KDistanceDetector, SLOFDetector

    rng = np.random.default_rng(0)
    n, dim = 512, 64
    img = rng.normal(size=(n, dim)).astype(np.float32)
    txt = (img + 0.5 * rng.normal(size=(n, dim))).astype(np.float32)
    img[:8] = 4 + 0.1 * rng.normal(size=(8, dim))
    txt[:8] = 3 + 0.1 * rng.normal(size=(8, dim))
    if args.out:
        np.savez(args.out, images=img, texts=txt)
    labels = np.arange(n) < 8
    theirs = {"kdist": KDistanceDetector(k=16), "slof": SLOFDetector(k=16), "dao": DAODetector(k=16)}
    images, texts = torch.from_numpy(img), torch.from_numpy(txt)
    print(f"{'score':6s} {'embeddings':10s} {'max |diff|':>11s} {'max rel':>9s}  AUROC authors / ours(authors) / ours(corrected)")
    for name, detector in theirs.items():
        for embeddings in ("both", "image"):
            with torch.no_grad():
                ref_scores = detector(Identity(), images, texts if embeddings == "both" else None).numpy()
            ours, _ = score_items(SCORES[name](), Reference(k=16, embeddings=embeddings, reference="batch",
                                                            batch_size=n, mode="authors"), img, txt)
            corrected, _ = score_items(SCORES[name](), Reference(k=16, embeddings=embeddings), img, txt)
            diff = np.abs(ours - ref_scores)
            rel = diff / np.maximum(np.abs(ref_scores), 1e-12)
            aucs = [roc_auc_score(labels, s) for s in (ref_scores, ours, corrected)]
            print(f"{name:6s} {embeddings:10s} {diff.max():11.3e} {rel.max():9.2e}  "
                  + " / ".join(f"{a:.4f}" for a in aucs))


if __name__ == "__main__":
    main()
