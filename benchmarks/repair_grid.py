"""Classifier repair calibration: each repair method at several trusted shares and learning rates.

Trains (or reuses, from --cache) one dirty-label poisoned classifier on ``shapes`` and repairs it
with pivotal-tuning, finetune and fine-pruning; prints CA / ASR / ARR on 1,000 test images
(the calibration table of docs/results/classifiers.md, "Classifiers: poisoned timm classifiers"). ``--suspect`` repairs a given checkpoint
instead (e.g. the demo's cached poisoned classifier); ``--latents`` sweeps Pivotal Tuning's
``l_latent``.

Usage: python benchmarks/repair_grid.py [--trigger badnet] [--suspect CKPT] [--n 10000] [--shares 0.01 0.05]
       [--lrs 0.003 0.01] [--latents 0.05 1] [--pivotal l_param=0,1000] [--methods pivotal-tuning finetune fine-pruning]
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

from poisonlab import attacks, defenses, triggers
from poisonlab.attacks.plan import PoisonedDataset
from poisonlab.data import open_dataset
from poisonlab.metrics.classifier_eval import ClassifierEvaluator
from poisonlab.models.classifier import create_classifier, load_classifier, save_classifier
from poisonlab.train.data import label_tensors
from poisonlab.train.fit import train_classifier
from poisonlab.train.loop import TrainConfig

TRIGGERS = {"badnet": {"size": 4, "location": "bottom-right"}, "blended": {"alpha": 0.2}}


def suspect(trigger: str, cache: Path, n: int = 10000) -> object:
    path = cache / f"suspect-{trigger}-{n}.safetensors"
    if not path.is_file():
        train = open_dataset("shapes", n=n, seed=1)
        atk = attacks.create("label-flip", target="star", trigger=trigger, trigger_params=TRIGGERS[trigger], rate=0.05)
        model = create_classifier(classnames=train.classnames, seed=0)
        config = TrainConfig(epochs=12, batch_size=128, lr=3e-3, weight_decay=0.05, warmup=20)
        train_classifier(model, PoisonedDataset(train, atk(train, seed=0)), config, progress=False)
        save_classifier(model, path)
    return load_classifier(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trigger", default="badnet", choices=sorted(TRIGGERS))
    p.add_argument("--shares", type=float, nargs="+", default=[0.01, 0.05])
    p.add_argument("--lrs", type=float, nargs="+", default=[0.003, 0.01])
    p.add_argument("--methods", nargs="+", default=["pivotal-tuning", "finetune", "fine-pruning"])
    p.add_argument("--latents", type=float, nargs="+", default=[0.05])
    p.add_argument("--pivotal", action="append", default=[], metavar="KEY=V1,V2",
                   help="Sweep another Pivotal Tuning parameter (repeatable; every combination runs).")
    p.add_argument("--suspect", type=Path, default=None)
    p.add_argument("--n", type=int, default=10000, help="Training-set size; the trusted share is of this many.")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="A parameter for every repair, e.g. freeze_norm=1 or steps=1000.")
    p.add_argument("--cache", type=Path, default=Path("bench-out"))
    a = p.parse_args()
    a.cache.mkdir(exist_ok=True)
    model = load_classifier(a.suspect) if a.suspect else suspect(a.trigger, a.cache, a.n)
    test = open_dataset("shapes", split="test", n=1000)
    trig = {a.trigger: triggers.create(a.trigger, **TRIGGERS[a.trigger])}

    def row(tag: str, clf: object) -> None:
        r = ClassifierEvaluator(clf, test).summary(trig, "star")
        b = r["backdoor"][a.trigger]
        print(f"| {tag} | {100 * r['ca']:.1f} | {100 * b['asr']:.1f} | {100 * b['arr']:.1f} |", flush=True)

    print("| repair | CA | ASR | ARR |\n|---|---|---|---|")
    row("suspect", model)
    pool = label_tensors(open_dataset("shapes", n=a.n, seed=5))
    sweeps = {"l_latent": a.latents, **dict(parse_sweep(item) for item in a.pivotal)}
    shared = {k: int(v) if v.isdigit() else float(v) for k, _, v in (item.partition("=") for item in a.set)}
    for share in a.shares:
        trusted = pool.subset(defenses.trusted_indices(len(pool), share, 0))
        for method, lr, extra in grid(a.methods, a.lrs, sweeps):
            start = time.perf_counter()
            res = defenses.create(method, family="classifier", lr=lr, **shared, **extra).run(model, trusted)
            stop = res.report.get("stopped_at")
            tags = "".join(f" {k} {v:g}" for k, v in extra.items())
            row(f"{method} {100 * share:g}% lr {lr:g}{tags} ({time.perf_counter() - start:.0f} s"
                f"{', floor stop at step ' + str(stop) if stop else ''})", res.model)


def parse_sweep(item: str) -> tuple[str, list[float]]:
    """``"l_param=0,1000"`` -> ``("l_param", [0.0, 1000.0])``."""
    key, _, values = item.partition("=")
    return key, [float(v) for v in values.split(",")]


def grid(methods: list[str], lrs: list[float], sweeps: dict[str, list[float]]) -> list[tuple[str, float, dict]]:
    """(method, lr, extra parameters) for every run; the sweeps vary Pivotal Tuning only."""
    combos = [dict(zip(sweeps, values, strict=True)) for values in itertools.product(*sweeps.values())]
    out = []
    for method in methods:
        extras = combos if method == "pivotal-tuning" else [{}]
        out += [(method, lr, extra) for lr in lrs for extra in extras]
    return out


if __name__ == "__main__":
    main()
