"""CLIP training throughput: poisonlab's loop against open_clip's own training script.

Both train the same architecture with the same batch size and number of samples on the CPU, in
one run of this script; the peer is ``python -m open_clip_train.main --dataset-type synthetic``
(shipped in the open_clip_torch wheel; its extra imports come with ``pip install -e '.[bench]'``).
Each side reports its own steady-state rate (open_clip: batch size / mean batch time from its
log; poisonlab: samples over the loop's wall time), so start-up is excluded on both sides.

Usage: python benchmarks/train_throughput.py [--model poisonlab-tiny-rn] [--batch-size 128] [--samples 7680]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

PEER = """
import sys
from poisonlab.models import register_configs
register_configs()
from open_clip_train.main import main
main(sys.argv[1:])
"""


def poisonlab_rate(model: str, batch_size: int, samples: int) -> float:
    from poisonlab.data import make_shapes
    from poisonlab.models import create_clip
    from poisonlab.train import TrainConfig, train_clip

    bundle = create_clip(model)
    data = make_shapes(n=samples, size=bundle.image_size)
    result = train_clip(bundle, data, TrainConfig(epochs=1, batch_size=batch_size, lr=1e-3), progress=False)
    return result.samples_per_second


def open_clip_rate(model: str, batch_size: int, samples: int) -> float:
    with tempfile.TemporaryDirectory() as logs:
        cmd = [sys.executable, "-c", PEER, "--dataset-type", "synthetic", "--train-num-samples", str(samples),
               "--batch-size", str(batch_size), "--epochs", "1", "--model", model, "--lr", "1e-3", "--workers", "0",
               "--device", "cpu", "--precision", "fp32", "--log-every-n-steps", "1", "--logs", logs,
               "--name", "bench", "--save-frequency", "0", "--report-to", "", "--warmup", "0"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        text = proc.stdout + proc.stderr + "".join(p.read_text() for p in Path(logs).rglob("*.log"))
    times = re.findall(r"Batch \(t\): ([0-9.]+)", text)
    if proc.returncode != 0 or not times:
        raise SystemExit(f"open_clip_train failed (exit {proc.returncode}):\n{text[-3000:]}")
    return batch_size / float(times[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="poisonlab-tiny-rn")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--samples", type=int, default=7680)
    args = parser.parse_args()
    ours = poisonlab_rate(args.model, args.batch_size, args.samples)
    peer = open_clip_rate(args.model, args.batch_size, args.samples)
    print(f"model {args.model}, batch {args.batch_size}, {args.samples} samples, CPU")
    print(f"poisonlab loop      {ours:8.1f} samples/s")
    print(f"open_clip_train     {peer:8.1f} samples/s")
    print(f"ratio (poisonlab / open_clip_train): {ours / peer:.2f}x")


if __name__ == "__main__":
    main()
