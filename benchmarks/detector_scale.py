"""Scoring many embeddings with the poisoned-pair detectors: time and peak memory of each search,
against the authors' batched computation on the same embeddings in the same run
(docs/results/detectors.md, "Scale").

Synthetic 512-d image embeddings (clusters of clean items, plus a tight far cluster of 0.3%
poisons, every 333rd item) are written once as a float16 ``.npy`` file; each method then scores them with DAO (k = 16)
in its own child process, which reports its wall time, its peak resident memory and the AUROC of
its scores:

- ``authors``: Huang et al.'s arithmetic on shuffled batches of 2,048 (``mode=authors``); with
  ``--authors-repo`` a second row runs their released ``DAODetector`` batch by batch, on the first
  ``--released-n`` items (its time grows linearly with them);
- ``faiss``: the whole set as reference, faiss IVF (approximate);
- ``exact``: the whole set as reference, exact chunked search (quadratic: run at ``--exact-n``
  items and extrapolated to ``--n`` as (n / exact_n)^2, said so in the output).

    python benchmarks/detector_scale.py --n 1000000 --exact-n 50000 \\
        [--authors-repo /path/to/Detect-CLIP-Backdoor-Samples --released-n 200000]

``--exact-blocks DIR`` measures the exact search at the full ``--n`` instead of extrapolating: the
queries in blocks of ``--block`` items (a multiple of the search's 4,096-row chunk, so each query
meets the same arithmetic as in one whole run), each block its own child process whose neighbours,
wall time and peak memory are saved in DIR; a run stopped part way resumes from the saved blocks.
When every block is there it scores DAO from the assembled neighbours, prints the summed time (and
the median block's time times the number of blocks, which a few blocks slowed by other work on the
machine do not move) and the largest peak, and runs the authors' batched computation on the same
embeddings for the ratio:

    python benchmarks/detector_scale.py --n 1000000 --exact-blocks runs/exact-1m [--block 49152]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make(path: Path, n: int, dim: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, n // 1000), dim)).astype(np.float32) * 2
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, dim))
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        block = centres[rng.integers(0, len(centres), m)] + rng.normal(size=(m, dim)).astype(np.float32)
        out[s:s + m] = block
    poisons = np.flatnonzero(poisoned(n))
    out[poisons] = 6 + 0.1 * rng.normal(size=(len(poisons), dim))
    out.flush()


def poisoned(n: int) -> np.ndarray:
    """Every 333rd item (0.3%), so that any first ``n`` items hold the same share."""
    return np.arange(n) % 333 == 0


def peak_mib() -> float:
    """This process's peak resident memory (``VmHWM``: unlike ``ru_maxrss`` it does not keep the
    parent's peak across fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(method: str, path: str, n: int, repo: str | None) -> None:
    """Score the first ``n`` embeddings of ``path``; print one JSON line."""
    import torch
    from sklearn.metrics import roc_auc_score

    from poisonlab.metrics.local_outliers import DAO, Reference, score_items

    images = np.load(path, mmap_mode="r")[:n]
    labels = poisoned(n)
    start = time.perf_counter()
    if method == "authors-released":
        sys.path.insert(0, repo)
        from backdoor_sample_detector import DAODetector  # the authors' code, outside poisonlab

        class Identity:
            def encode_image(self, x):
                return x

        detector, scores = DAODetector(k=16), np.zeros(n)
        for items in Reference(reference="batch", batch_size=2048, embeddings="image", mode="authors").batches(n):
            with torch.no_grad():
                scores[items] = detector(Identity(), torch.from_numpy(np.asarray(images[items], np.float32))).numpy()
    else:
        ref = {"authors": Reference(embeddings="image", reference="batch", batch_size=2048, mode="authors"),
               "faiss": Reference(embeddings="image", reference="all", search="faiss"),
               "exact": Reference(embeddings="image", reference="all")}[method]
        scores, _ = score_items(DAO(), ref, images, None)
    seconds = time.perf_counter() - start
    peak = peak_mib()
    print(json.dumps({"method": method, "n": n, "seconds": seconds, "peak_mib": peak,
                      "auroc": float(roc_auc_score(labels, scores))}))


def exact_block(path: str, n: int, start: int, stop: int, out: Path) -> None:
    """The exact whole-set neighbours of queries ``start:stop`` of the first ``n`` embeddings,
    saved with the block's wall time and peak memory as ``out/block-START.npz``."""
    from poisonlab.metrics.neighbours import nearest

    images = np.load(path, mmap_mode="r")[:n]
    groups = np.arange(n)
    begin = time.perf_counter()
    found = nearest(images[start:stop], images, 16, groups[start:stop], groups)
    seconds = time.perf_counter() - begin
    tmp = out / f".block-{start:08d}.tmp.npz"
    np.savez(tmp, distances=found.distances, indices=found.indices, seconds=seconds, peak_mib=peak_mib())
    tmp.rename(out / f"block-{start:08d}.npz")


def exact_blocks(out: Path, n: int, dim: int, block: int) -> None:
    """Every block of the exact search at ``n`` (skipping those saved), then DAO's AUROC, the summed
    time, the largest peak and the ratio to the authors' batched run on the same embeddings."""
    import torch
    from sklearn.metrics import roc_auc_score

    from poisonlab.metrics.local_outliers import DAO
    from poisonlab.metrics.neighbours import Neighbours

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"images-{n}x{dim}.npy"
    if not path.exists():
        make(out / "images.tmp.npy", n, dim)
        (out / "images.tmp.npy").rename(path)
    starts = range(0, n, block)
    print(f"{n} x {dim} float16 embeddings, exact search in {len(starts)} blocks of {block}, "
          f"{torch.get_num_threads()} threads", flush=True)
    for start in starts:
        if not (out / f"block-{start:08d}.npz").exists():
            subprocess.run([sys.executable, __file__, "--block-child", str(path), str(n), str(start),
                            str(min(start + block, n)), str(out)], check=True)
        saved = np.load(out / f"block-{start:08d}.npz")
        print(f"block {start:>8}: {float(saved['seconds']):7.1f} s  peak {float(saved['peak_mib']):6.0f} MiB", flush=True)
    blocks = [np.load(out / f"block-{start:08d}.npz") for start in starts]
    found = Neighbours(np.concatenate([b["distances"] for b in blocks]), np.concatenate([b["indices"] for b in blocks]))
    auroc = float(roc_auc_score(poisoned(n), DAO().score(found, found)))
    seconds, peak = sum(float(b["seconds"]) for b in blocks), max(float(b["peak_mib"]) for b in blocks)
    line = subprocess.run([sys.executable, __file__, "--child", "authors", str(path), str(n)], check=True,
                          capture_output=True, text=True).stdout.strip().splitlines()[-1]
    authors = json.loads(line)
    times = sorted(float(b["seconds"]) for b in blocks)
    median = times[len(times) // 2]
    print(f"exact             n={n:>8}  {seconds:8.1f} s  peak {peak:7.0f} MiB  AUROC {auroc:.4f}  (sum of the blocks; "
          f"blocks {times[0]:.0f}-{times[-1]:.0f} s, median x blocks {median * len(times):.0f} s)")
    print(f"authors           n={n:>8}  {authors['seconds']:8.1f} s  peak {authors['peak_mib']:7.0f} MiB  "
          f"AUROC {authors['auroc']:.4f}")
    print(f"ratio to the authors' batched computation: exact {seconds / authors['seconds']:.1f}x (measured)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--exact-n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--authors-repo", default=None)
    parser.add_argument("--released-n", type=int, default=None, help="Items for the released code (default --n).")
    parser.add_argument("--exact-blocks", type=Path, default=None, metavar="DIR",
                        help="Measure the exact search at --n block by block, resumable (see above).")
    parser.add_argument("--block", type=int, default=12 * 4096, help="Queries per block of --exact-blocks.")
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "PATH", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--block-child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]), args.authors_repo)
        return
    if args.block_child:
        path, n, start, stop, out = args.block_child
        exact_block(path, int(n), int(start), int(stop), Path(out))
        return
    if args.exact_blocks:
        exact_blocks(args.exact_blocks, args.n, args.dim, args.block)
        return
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "images.npy"
        make(path, args.n, args.dim)
        print(f"{args.n} x {args.dim} float16 embeddings ({path.stat().st_size / 2**20:.0f} MiB), "
              f"{torch.get_num_threads()} threads")
        runs = [("authors", args.n), ("faiss", args.n), ("exact", args.exact_n)]
        if args.authors_repo:
            runs.insert(1, ("authors-released", args.released_n or args.n))
        results = {}
        for method, n in runs:
            cmd = [sys.executable, __file__, "--child", method, str(path), str(n)]
            if args.authors_repo:
                cmd += ["--authors-repo", args.authors_repo]
            line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            results[method] = json.loads(line)
            r = results[method]
            print(f"{method:17s} n={r['n']:>8}  {r['seconds']:8.1f} s  peak {r['peak_mib']:7.0f} MiB  AUROC {r['auroc']:.4f}")
        exact = results["exact"]
        scaled = exact["seconds"] * (args.n / exact["n"]) ** 2
        base = results["authors"]["seconds"]
        print(f"exact at n={args.n}: {scaled:.0f} s extrapolated as (n / {exact['n']})^2 from the run above")
        print(f"ratio to the authors' batched computation: faiss {results['faiss']['seconds'] / base:.2f}x, "
              f"exact {scaled / base:.1f}x (extrapolated)")
        if "authors-released" in results:
            r = results["authors-released"]
            per_item = (r["seconds"] / r["n"]) / (base / args.n)
            print(f"the released DAODetector takes {per_item:.2f}x poisonlab's authors mode per item")


if __name__ == "__main__":
    main()
