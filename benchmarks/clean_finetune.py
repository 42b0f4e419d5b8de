"""The clean reference of a spec's poisoned fine-tunes: the same fine-tune of the clean model on
the same pairs with no poison, per training seed, and its zero-shot CA (docs/results/modern-attacks.md:
"CA within 3 points of the clean fine-tune").

    python benchmarks/clean_finetune.py --spec hard-case --clean hard-out/cache/pretrain-*/model.safetensors \\
        --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics

from poisonlab.bench.spec import load_spec
from poisonlab.data import open_dataset
from poisonlab.metrics import ClipEvaluator
from poisonlab.models import load_clip
from poisonlab.train import train_clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="hard-case")
    parser.add_argument("--clean", required=True, help="The spec's pre-trained clean model.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    spec = load_spec(args.spec)
    p = spec.poison
    data = open_dataset(spec.dataset, split="train", size=spec.image_size, n=p.n, seed=p.data_seed)
    test = open_dataset(spec.dataset, split="test", size=spec.image_size, n=spec.test.n, seed=spec.test.data_seed)
    cas = []
    for seed in args.seeds:
        model = load_clip(args.clean)
        train_clip(model, data, p.train_config(seed), progress=False)
        cas.append(ClipEvaluator(model, test).clean_accuracy())
        print(f"seed {seed}: clean fine-tune CA {100 * cas[-1]:.1f}")
    sd = statistics.stdev(cas) if len(cas) > 1 else 0.0
    print(f"mean ± sd: {100 * statistics.mean(cas):.1f} ± {100 * sd:.1f}")


if __name__ == "__main__":
    main()
