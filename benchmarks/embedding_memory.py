"""Peak memory of the detectors' embedding pass as the set grows (docs/results/detectors.md, "Scale").

Writes webdataset shards of N ``shapes`` pairs at 224 px (``benchmarks/scale.py``'s writer for
the first ten shards, the rest their pairs under new keys; kept between runs), then for each N
embeds every pair with ``--model`` (default the demo's tiny CLIP, which reads the decoded 224-px
images resized to its 32 px; ``poisonlab-tiny-rn-224`` reads them whole) in stream mode
(``--workers`` DataLoader workers), each N in a fresh process, into float16
files on disk (:func:`poisonlab.metrics.pair_embeddings.embed_pairs`). Reported: pairs/s, the
main process's peak RSS (``VmHWM``) and the largest worker's (``getrusage``; a forked worker counts
the pages it shares with the main process, so this is an upper bound), and the size of the
embedding files. Flat memory means the pass holds a batch, not the set.

    python benchmarks/embedding_memory.py --sizes 10000 100000 [--workers 2] [--model poisonlab-tiny-rn-224] \
        [--dir /tmp/poisonlab-scale]
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detector_scale import peak_mib  # noqa: E402
from scale import PER_SHARD, SIZE, pattern, write_shards  # noqa: E402


def copy_shards(folder: Path, n: int) -> None:
    """Shards beyond the first ten are the first ten's pairs under new keys (rendering 224-px shapes
    is the slow part of writing them; the embedding pass reads each shard's bytes the same way)."""
    write_shards(folder, min(n, 10 * PER_SHARD))
    for s in range(10, n // PER_SHARD):
        path = folder / f"shapes-{s:05d}.tar"
        if path.exists():
            continue
        tmp = path.with_suffix(".tmp")
        with tarfile.open(folder / f"shapes-{s % 10:05d}.tar") as src, tarfile.open(tmp, "w") as tar:
            for member in src.getmembers():
                payload = src.extractfile(member).read()  # type: ignore[union-attr]
                info = tarfile.TarInfo(f"{s:05d}{member.name[5:]}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
        tmp.rename(path)


def child(shards: str, workers: int, model: str) -> None:
    from poisonlab.data import open_dataset
    from poisonlab.metrics.pair_embeddings import embed_pairs
    from poisonlab.models import create_clip
    from poisonlab.train.stream import DataConfig

    bundle = create_clip(model)
    data = open_dataset(shards, size=SIZE)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        embed_pairs(bundle, data, tmp, data_config=DataConfig(mode="stream", workers=workers), progress=False)
        seconds = time.perf_counter() - start
        size = sum(f.stat().st_size for f in Path(tmp).iterdir())
    print(json.dumps({"n": len(data), "seconds": seconds, "bytes": size,
                      "main_mib": peak_mib(),
                      "worker_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dir", default="/tmp/poisonlab-scale")
    parser.add_argument("--model", default="poisonlab-tiny-rn")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.child[2])
        return
    folder = Path(args.dir)
    copy_shards(folder, max(args.sizes))
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--child", pattern(folder, n), str(args.workers), args.model],
                             check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        print(f"n={r['n']:>7}: {r['n'] / r['seconds']:7.0f} pairs/s, main peak {r['main_mib']:6.0f} MiB, largest "
              f"worker {r['worker_mib']:6.0f} MiB, embeddings {r['bytes'] / 2**20:6.1f} MiB on disk")


if __name__ == "__main__":
    main()
