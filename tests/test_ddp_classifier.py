"""A classifier trained under 2-rank DDP (gloo) keeps one set of weights on both ranks."""

from __future__ import annotations

import os

import torch
import torch.multiprocessing as mp

from poisonlab.data import make_shapes
from poisonlab.models.classifier import create_classifier
from poisonlab.train import DistInfo, TrainConfig, Trainer
from poisonlab.train.data import label_tensors
from poisonlab.train.objectives.supervised import SupervisedObjective


def _worker(rank, world, init_file, out_dir):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    data = make_shapes(n=128, seed=3)
    bundle = create_classifier("poisonlab-resnet-tiny", len(data.classnames), 32, data.classnames, seed=0)
    cfg = TrainConfig(steps=3, batch_size=16, lr=1e-2, seed=1)
    Trainer(SupervisedObjective(bundle), label_tensors(data), cfg, dist=DistInfo(rank=rank, world_size=world),
            progress=False).fit()
    params = {n: p.detach().clone() for n, p in bundle.model.named_parameters()}  # BN statistics are per rank
    torch.save(params, os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_two_ranks_end_with_the_same_classifier(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    start = dict(create_classifier("poisonlab-resnet-tiny", 10, 32, make_shapes(n=1).classnames, seed=0)
                 .model.named_parameters())
    moved = max(float((a[k] - start[k].detach()).abs().max()) for k in a)
    assert moved > 0  # the ranks trained
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
