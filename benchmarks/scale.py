"""Memory and speed of the data path as the dataset grows: in memory vs streamed, against open_clip_train.

Writes webdataset shards of N ``shapes`` pairs at 224 px (JPEG, 1,000 pairs a shard, like web
data), then for each N trains the same steps (``poisonlab-tiny-rn-224``, the bundled tiny ResNet
CLIP at 224 px) in memory mode and in stream mode with 0, 1 and 2 DataLoader workers, each in a
fresh process, and open_clip's own trainer (``open_clip_train.main --dataset-type webdataset``)
on the same shards, model, batch and workers. Reported per run:

- samples/s over the steps after the first ``--warm`` (both sides: the time between steps, data
  wait included; for open_clip_train the per-step "Batch (t)" of its log);
- setup seconds before the first step (memory mode decodes the whole set there);
- peak RSS of poisonlab's main process and of its largest worker (``getrusage``), in MB; the
  stream total adds every worker's peak, an upper bound (forked workers share the parent's pages).

Usage: python benchmarks/scale.py [--sizes 2000 8000 32000] [--steps 50] [--batch-size 64]
       [--workers 0 1 2] [--dir /tmp/poisonlab-scale] [--no-peer]
"""

from __future__ import annotations

import argparse
import io
import json
import re
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

MODEL = "poisonlab-tiny-rn-224"
SIZE = 224
PER_SHARD = 1000

PEER = """
import sys
from poisonlab.models import register_configs
register_configs()
from open_clip_train.main import main
main(sys.argv[1:])
"""


def write_shards(folder: Path, n: int) -> None:
    """``n // 1000`` shards of shapes pairs at 224 px (kept between runs)."""
    import numpy as np
    from PIL import Image

    from poisonlab.data import make_shapes

    folder.mkdir(parents=True, exist_ok=True)
    for s in range(n // PER_SHARD):
        path = folder / f"shapes-{s:05d}.tar"
        if path.exists():
            continue
        data = make_shapes(n=PER_SHARD, size=SIZE, seed=100 + s)
        tmp = path.with_suffix(".tmp")
        with tarfile.open(tmp, "w") as tar:
            for i in range(PER_SHARD):
                arr = data.images[i].permute(1, 2, 0).numpy().astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(arr).save(buf, format="JPEG", quality=90)
                key = f"{s:05d}{i:04d}"
                for ext, payload in (("jpg", buf.getvalue()), ("txt", data.caption_list[i].encode()),
                                     ("cls", str(data.label_list[i]).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        tmp.rename(path)


def pattern(folder: Path, n: int) -> str:
    return str(folder / f"shapes-{{00000..{n // PER_SHARD - 1:05d}}}.tar")


def child(args: argparse.Namespace) -> None:
    """One poisonlab run in this process; prints a JSON line."""
    import gc

    from poisonlab.data import open_dataset
    from poisonlab.models import create_clip
    from poisonlab.train import ClipObjective, TrainConfig, Trainer
    from poisonlab.train.stream import DataConfig, open_items

    start = time.perf_counter()
    bundle = create_clip(MODEL)
    data = open_dataset(args.shards, size=SIZE)
    source = open_items(data, SIZE, bundle.tokenize, DataConfig(mode=args.mode, workers=args.workers))
    objective = ClipObjective(bundle)
    stamps: list[float] = []
    loss = objective.loss

    def timed(batch, g):  # type: ignore[no-untyped-def]
        stamps.append(time.perf_counter())
        return loss(batch, g)

    objective.loss = timed  # type: ignore[method-assign]
    Trainer(objective, source, TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=1e-3),
            progress=False).fit()
    stamps.append(time.perf_counter())
    if hasattr(source, "close"):
        source.close()
    del source
    gc.collect()
    time.sleep(0.5)  # let the workers exit so their peak is counted
    steps = len(stamps) - 1 - args.warm
    print(json.dumps({
        "rate": args.batch_size * steps / (stamps[-1] - stamps[args.warm]),
        "setup_s": stamps[0] - start,
        "rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }))


def run_child(shards: str, mode: str, workers: int, a: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", "--shards", shards, "--mode", mode, "--workers-one", str(workers),
           "--steps", str(a.steps), "--batch-size", str(a.batch_size), "--warm", str(a.warm)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"poisonlab run failed ({mode}, {workers} workers):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_peer(shards: str, n: int, workers: int, a: argparse.Namespace) -> dict:
    samples = a.steps * a.batch_size
    with tempfile.TemporaryDirectory() as logs:
        cmd = [sys.executable, "-c", PEER, "--train-data", shards, "--dataset-type", "webdataset",
               "--train-num-samples", str(samples), "--batch-size", str(a.batch_size), "--epochs", "1",
               "--model", MODEL, "--lr", "1e-3", "--workers", str(workers), "--device", "cpu",
               "--precision", "fp32", "--log-every-n-steps", "1", "--logs", logs, "--name", "scale",
               "--save-frequency", "0", "--report-to", "", "--warmup", "0"]
        before = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - before
        text = proc.stdout + proc.stderr + "".join(p.read_text() for p in Path(logs).rglob("*.log"))
    times = [float(t) for t in re.findall(r"Batch \(t\): ([0-9.]+)", text)]
    if proc.returncode != 0 or len(times) <= a.warm:
        raise SystemExit(f"open_clip_train failed (exit {proc.returncode}):\n{text[-3000:]}")
    steady = times[a.warm:]
    return {"rate": a.batch_size * len(steady) / sum(steady), "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 32000])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warm", type=int, default=5, help="Steps left out of the rate.")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "poisonlab-scale")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shards", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--workers-one", dest="workers_one", type=int, default=0, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.child:
        a.workers = a.workers_one
        child(a)
        return
    write_shards(a.dir, max(a.sizes))
    rows = []
    for n in a.sizes:
        shards = pattern(a.dir, n)
        runs = [("memory", 0)] + [("stream", w) for w in a.workers]
        for mode, w in runs:
            r = run_child(shards, mode, w, a)
            rows.append({"n": n, "side": "poisonlab", "mode": mode, "workers": w, **r})
            print(f"N={n:6d} poisonlab {mode:6s} w={w}  {r['rate']:7.1f} samples/s  setup {r['setup_s']:6.1f} s  "
                  f"RSS main {r['rss_main_mb']:7.0f} MB  worker {r['rss_worker_mb']:6.0f} MB", flush=True)
        if not a.no_peer:
            w = max(a.workers)
            r = run_peer(shards, n, w, a)
            rows.append({"n": n, "side": "open_clip_train", "mode": "webdataset", "workers": w, **r})
            ours = next(x for x in rows if x["n"] == n and x["mode"] == "stream" and x["workers"] == w)
            print(f"N={n:6d} open_clip_train w={w}  {r['rate']:7.1f} samples/s  (wall {r['wall_s']:.0f} s)  "
                  f"ratio poisonlab stream / open_clip_train: {ours['rate'] / r['rate']:.2f}x", flush=True)
    stream = {n: max(x["rss_main_mb"] + x["workers"] * x["rss_worker_mb"] for x in rows
                     if x["n"] == n and x["mode"] == "stream") for n in a.sizes}
    memory = {n: next(x["rss_main_mb"] for x in rows if x["n"] == n and x["mode"] == "memory") for n in a.sizes}
    lo, hi = min(a.sizes), max(a.sizes)
    print(f"stream peak RSS (main + workers) N={hi} / N={lo}: {stream[hi] / stream[lo]:.2f}x; "
          f"memory mode: {memory[hi] / memory[lo]:.2f}x")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
