"""Training under 2-rank DDP (gloo): every family (classifier, CLIP, SSL) keeps one set of weights on both ranks; PAR's S is global."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp
from conftest import rank_loss_and_grads

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


def _par_worker(rank, world, init_file, batch, out_dir):
    from poisonlab.defenses.par import ParObjective
    from poisonlab.models import create_clip

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    suspect = create_clip("poisonlab-tiny-vit", seed=1)
    bundle = suspect.copy()
    with torch.no_grad():  # move the trainable copy away a little, so S differs per pair
        for p in bundle.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    objective = ParObjective(bundle, suspect, tau=10.0, rank=rank, world_size=world)
    got = rank_loss_and_grads(objective, bundle.model, batch, rank, world)
    torch.save(got, os.path.join(out_dir, f"par{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_par_distance_over_the_global_batch(tmp_path):
    from poisonlab.defenses.par import ParObjective
    from poisonlab.models import create_clip

    data = make_shapes(n=16, seed=4)
    suspect = create_clip("poisonlab-tiny-vit", seed=1)
    batch = {"images": data.images.float() / 255, "tokens": suspect.tokenize(data.caption_list)}
    mp.spawn(_par_worker, args=(2, str(tmp_path / "init"), batch, str(tmp_path)), nprocs=2, join=True)
    bundle = suspect.copy()
    with torch.no_grad():
        for p in bundle.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    loss, extra = ParObjective(bundle, suspect, tau=10.0).loss(batch, torch.Generator())
    loss.backward()
    for rank in range(2):
        got = torch.load(tmp_path / f"par{rank}.pt", weights_only=True)
        assert got["s_img"] == pytest.approx(extra["s_img"], rel=1e-5)
        torch.testing.assert_close(got["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
        for n, p in bundle.model.named_parameters():
            if p.grad is not None:
                torch.testing.assert_close(got["grads"][n], p.grad, rtol=1e-4, atol=1e-6, msg=n)


def _family_worker(rank, world, init_file, out_dir):
    """A few steps of each family's trainer on 2 ranks; saves this rank's start and end parameters."""
    from poisonlab.models import create_clip
    from poisonlab.models.classifier import create_encoder
    from poisonlab.train import train_clip
    from poisonlab.train.fit import train_ssl

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    data, dist = make_shapes(n=64, seed=3), DistInfo(rank=rank, world_size=world)
    cfg = TrainConfig(steps=3, batch_size=16, lr=1e-2, seed=1)
    for family in ("clip", "simclr", "byol"):
        model = create_clip("poisonlab-tiny-vit", seed=0) if family == "clip" else \
            create_encoder("poisonlab-resnet-tiny", 32, seed=0)
        start = {n: p.detach().clone() for n, p in model.module.named_parameters()}
        if family == "clip":
            train_clip(model, data, cfg, None, dist=dist, progress=False)
        else:
            train_ssl(model, label_tensors(data), cfg, family, None, dist=dist, progress=False)
        end = {n: p.detach().clone() for n, p in model.module.named_parameters()}
        torch.save({"start": start, "end": end}, os.path.join(out_dir, f"{family}{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_two_ranks_end_with_the_same_weights(tmp_path):
    """CLIP and SSL training (SimCLR; BYOL with its momentum encoder) keep one model over 2 ranks:
    each rank sees other images, so only averaged gradients keep the weights equal."""
    mp.spawn(_family_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for family in ("clip", "simclr", "byol"):
        a, b = (torch.load(tmp_path / f"{family}{r}.pt", weights_only=True) for r in range(2))
        assert max(float((a["end"][k] - a["start"][k]).abs().max()) for k in a["end"]) > 0, family  # it trained
        for k in a["end"]:
            torch.testing.assert_close(a["end"][k], b["end"][k], rtol=0, atol=1e-6, msg=f"{family}: {k}")


def _safeclip_objective(rank=0, world=1):
    """A SafeCLIP objective past its warm-up with a fixed split of 16 pairs (every third risky)
    and views that draw nothing random, so that ranks and one process see the same batch."""
    from poisonlab import defenses
    from poisonlab.defenses.safeclip import SafeClipObjective
    from poisonlab.models import create_clip

    bundle = create_clip("poisonlab-tiny-vit", seed=0)
    defense = defenses.create("safeclip", unimodal_epochs=0, clip_epochs=0, bank_size=8)
    objective = SafeClipObjective(bundle, defense, seed=2, rank=rank, world_size=world,
                                  image_augment=lambda x, g: x.flip(-1), text_augment=lambda c, rng: c.upper())
    objective.prepare(16, 1, 4)
    objective.net.safe = torch.arange(16) % 3 != 0
    objective.epoch = 1
    return objective


def _safeclip_worker(rank, world, init_file, batch, out_dir):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    objective = _safeclip_objective(rank, world)
    got = rank_loss_and_grads(objective, objective.net, batch, rank, world)
    torch.save({**got, "bank": objective.net.image_bank.bank.clone()}, os.path.join(out_dir, f"safeclip{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_safeclip_split_loss_over_the_global_batch(tmp_path):
    """SafeCLIP under DDP: each rank's loss is the one-process loss of the whole batch (safe and
    risky items gathered from both ranks), the averaged gradients and the banks are the same."""
    data = make_shapes(n=16, seed=4)
    objective = _safeclip_objective()
    batch = {"images": data.images.float() / 255, "tokens": objective.bundle.tokenize(data.caption_list),
             "index": torch.arange(16), "captions": list(data.caption_list)}
    mp.spawn(_safeclip_worker, args=(2, str(tmp_path / "init"), batch, str(tmp_path)), nprocs=2, join=True)
    loss, extra = objective.loss(batch, torch.Generator())
    loss.backward()
    assert 0 < extra["safe_share"] < 1 and "l_unimodal" in extra and "l_clip" in extra
    for rank in range(2):
        got = torch.load(tmp_path / f"safeclip{rank}.pt", weights_only=True)
        torch.testing.assert_close(got["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
        assert got["safe_share"] == pytest.approx(extra["safe_share"])
        torch.testing.assert_close(got["bank"], objective.net.image_bank.bank)
        for n, p in objective.net.named_parameters():
            if p.grad is not None:
                torch.testing.assert_close(got["grads"][n], p.grad, rtol=1e-4, atol=1e-6, msg=n)
