"""Why the demo lays images out channels-last and runs its sections in a second process.

Three comparisons on the CPU, each in the same run of this script:

1. memory layout: CLIP training samples/s with images channels-last (poisonlab's default) against
   the plain NCHW layout (the normalisation patched to return contiguous NCHW tensors);
2. threads: the same training with 2 intra-op threads against 1;
3. two processes: a 1-thread CLIP training and a 1-thread classifier training at the same time,
   each against its own 2-thread rate alone: the sum of the two ratios is the work two one-thread
   processes get done relative to one two-thread process (1.0 = no gain).

Usage: python benchmarks/cpu_layout_threads.py [--pairs 3840]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp

import torch


def clip_rate(pairs: int, threads: int, nchw: bool = False) -> float:
    # benchmarks/ is on sys.path when a script in it runs
    from train_throughput import poisonlab_rate

    import poisonlab.models.clip as clip_module

    torch.set_num_threads(threads)
    layout = clip_module.normalize_images
    if nchw:
        clip_module.normalize_images = lambda *a: layout(*a).contiguous()
    try:
        return poisonlab_rate("poisonlab-tiny-rn", 128, pairs)
    finally:
        clip_module.normalize_images = layout


def classifier_rate(images: int, threads: int) -> float:
    from poisonlab.data import make_shapes
    from poisonlab.models.classifier import create_classifier
    from poisonlab.train import TrainConfig
    from poisonlab.train.fit import train_classifier

    torch.set_num_threads(threads)
    bundle = create_classifier("poisonlab-resnet-tiny", num_classes=10, image_size=32)
    data = make_shapes(n=images, size=32)
    return train_classifier(bundle, data, TrainConfig(epochs=1, batch_size=128, lr=1e-3), progress=False).samples_per_second


def _in_child(fn: str, n: int, threads: int, queue: mp.Queue) -> None:
    queue.put((fn, globals()[fn](n, threads)))


def side_by_side(pairs: int, images: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_in_child, args=("clip_rate", pairs, 1, queue)),
             ctx.Process(target=_in_child, args=("classifier_rate", images, 1, queue))]
    for p in procs:
        p.start()
    rates = dict(queue.get() for _ in procs)
    for p in procs:
        p.join()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3840)
    args = parser.parse_args()
    images = args.pairs * 3  # the classifier step is ~3x cheaper; similar run times
    cl2, nchw2, cl1 = clip_rate(args.pairs, 2), clip_rate(args.pairs, 2, nchw=True), clip_rate(args.pairs, 1)
    cls2 = classifier_rate(images, 2)
    both = side_by_side(args.pairs, images)
    print(f"CLIP tiny-rn, {args.pairs} pairs, batch 128 (samples/s)")
    print(f"  channels-last, 2 threads {cl2:8.1f}")
    print(f"  NCHW,          2 threads {nchw2:8.1f}   channels-last / NCHW: {cl2 / nchw2:.2f}x")
    print(f"  channels-last, 1 thread  {cl1:8.1f}   1 / 2 threads: {cl1 / cl2:.2f}")
    print(f"classifier resnet-tiny, {images} images, 2 threads {cls2:8.1f}")
    a, b = both["clip_rate"] / cl2, both["classifier_rate"] / cls2
    print(f"side by side, 1 thread each: CLIP {both['clip_rate']:.1f} ({a:.2f} of its 2-thread rate), "
          f"classifier {both['classifier_rate']:.1f} ({b:.2f})")
    print(f"work of two 1-thread processes / one 2-thread process: {a + b:.2f}x")


if __name__ == "__main__":
    main()
