"""SSL calibration: does a tiny encoder learn the data, and the patch backdoor, on two CPU cores?

Trains one SSL encoder (clean or with the ssl-patch attack on 50% of the target class) and
reports the linear probe (all labelled training images, test split of the same data seed):
clean accuracy, FP(target) and ASR. The numbers in docs/results/ssl.md, "Self-supervised encoders: patch poisoning" come from it.

Usage: python benchmarks/ssl_calibration.py --dataset digits --method simclr --epochs 80 [--poisoned] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from poisonlab import attacks, triggers
from poisonlab.attacks.plan import PoisonedDataset
from poisonlab.data import open_dataset
from poisonlab.metrics.probe import probe_report
from poisonlab.models.classifier import create_encoder
from poisonlab.train.data import label_tensors
from poisonlab.train.fit import train_ssl
from poisonlab.train.loop import TrainConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--n", type=int, default=None, help="training images of generated data (default: all/2000)")
    p.add_argument("--method", default="simclr")
    p.add_argument("--epochs", type=float, default=80)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--min-scale", type=float, default=0.3)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--poisoned", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    train = open_dataset(a.dataset, n=a.n, seed=1)
    target = train.classnames[3 if a.dataset.startswith("shapes") else 0]
    data = train
    if a.poisoned:
        atk = attacks.create("ssl-patch", target=target, trigger_params={"size": a.patch})
        data = PoisonedDataset(train, atk(train, seed=0))
    encoder = create_encoder(seed=0)
    start = time.perf_counter()
    config = TrainConfig(epochs=a.epochs, batch_size=256, lr=a.lr, weight_decay=1e-4, warmup=20)
    train_ssl(encoder, data, config, a.method, progress=False, min_scale=a.min_scale)
    seconds = time.perf_counter() - start
    lab = label_tensors(train)
    test = label_tensors(open_dataset(a.dataset, split="test", n=1000 if a.n else None, seed=1))
    rep = probe_report(encoder, lab.images, lab.labels, test.images, test.labels,
                       triggers.create("patch-image", size=a.patch), train.classnames.index(target),
                       len(train.classnames))
    print(f"{a.dataset} {a.method} {'poisoned' if a.poisoned else 'clean'} {a.epochs:g} epochs, "
          f"{torch.get_num_threads()} threads ({seconds:.0f} s): "
          f"probe clean acc {100 * rep['clean_acc']:.1f}%, FP({target}) {rep['fp']} of {rep['test']}, "
          f"ASR {100 * rep['asr']:.1f}%")


if __name__ == "__main__":
    main()
