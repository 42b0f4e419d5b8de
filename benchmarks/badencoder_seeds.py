"""BadEncoder (Jia et al., S&P 2022) on a clean tiny CLIP's image tower and on a clean SimCLR
encoder, over training seeds: clean accuracy, ASR and RA before and after (docs/results/modern-attacks.md).

CLIP: zero-shot on 1,000 ``shapes`` test images, shadow data 2,000 ``shapes`` training images
(data seed 5), target ``star``. Encoder: a linear probe on half of the embedded ``digits``
training images, tested on the ``digits`` test split, shadow data the 1,437 training images,
target ``zero``. The trigger is BadEncoder's default (a 7-px stripe patch at the bottom right).

    python benchmarks/badencoder_seeds.py --clip demo-out/cache/pretrain-*/model.safetensors \\
        --encoder simclr/model.safetensors --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics

from poisonlab import attacks
from poisonlab.data import open_dataset
from poisonlab.data.base import trusted_indices
from poisonlab.metrics import ClipEvaluator
from poisonlab.metrics.probe import LinearProbe, probe_report
from poisonlab.models import load_clip
from poisonlab.models.classifier import load_classifier
from poisonlab.train.data import label_tensors


def clip_row(path: str, seed: int, epochs: float) -> dict[str, float]:
    test = open_dataset("shapes", split="test", size=32, n=1000, seed=0)
    shadow = open_dataset("shapes", split="train", size=32, n=2000, seed=5)
    atk = attacks.create("badencoder", target="star", epochs=epochs)
    model = load_clip(path)
    trigger = atk.trigger_for(model.image_size)
    ev = ClipEvaluator(model, test)
    before = {"ca": ev.clean_accuracy(), **ev.backdoor(trigger, "star")}
    atk(model, shadow, seed=seed)
    ev = ClipEvaluator(model, test)
    after = {"ca": ev.clean_accuracy(), **ev.backdoor(trigger, "star")}
    return {"ca0": before["ca"], "asr0": before["asr"], "ca": after["ca"], "asr": after["asr"], "ra": after["ra"]}


def encoder_row(path: str, seed: int, epochs: float) -> dict[str, float]:
    train = open_dataset("digits", split="train", size=32)
    test = label_tensors(open_dataset("digits", split="test", size=32), 32)
    lab = label_tensors(train, 32)
    lab = lab.subset(trusted_indices(len(lab), 0.5, 0))
    target = train.classnames.index("zero")
    atk = attacks.create("badencoder", target="zero", epochs=epochs)
    model = load_classifier(path)
    trigger = atk.trigger_for(model.image_size)

    def probe() -> dict[str, float]:
        return probe_report(model, lab.images, lab.labels, test.images, test.labels, trigger, target,
                            len(train.classnames), LinearProbe())

    before = probe()
    atk(model, train, seed=seed)
    after = probe()
    return {"ca0": before["clean_acc"], "asr0": before["asr"], "ca": after["clean_acc"], "asr": after["asr"],
            "ra": after["ra"]}


def summary(rows: list[dict[str, float]], key: str) -> str:
    values = [100 * r[key] for r in rows]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", help="A clean poisonlab CLIP checkpoint (the demo's pre-trained model).")
    parser.add_argument("--encoder", help="A clean poisonlab SSL encoder checkpoint on digits.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, default=20)
    args = parser.parse_args()
    print("| model | seed | clean CA | clean ASR | BadEncoder CA | BadEncoder ASR | RA |")
    print("|---|---|---|---|---|---|---|")
    for name, path, row in (("CLIP image tower (zero-shot)", args.clip, clip_row),
                            ("SimCLR encoder (linear probe)", args.encoder, encoder_row)):
        if not path:
            continue
        rows = [row(path, seed, args.epochs) for seed in args.seeds]
        for seed, r in zip(args.seeds, rows, strict=True):
            print(f"| {name} | {seed} | {100 * r['ca0']:.1f} | {100 * r['asr0']:.1f} | {100 * r['ca']:.1f} | "
                  f"{100 * r['asr']:.1f} | {100 * r['ra']:.1f} |")
        print(f"| {name} | mean ± sd | {summary(rows, 'ca0')} | {summary(rows, 'asr0')} | {summary(rows, 'ca')} | "
              f"{summary(rows, 'asr')} | {summary(rows, 'ra')} |")


if __name__ == "__main__":
    main()
