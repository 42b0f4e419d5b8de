from __future__ import annotations

import json
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from lightly.loss import NegativeCosineSimilarity, NTXentLoss
from lightly.models.modules import BYOLPredictionHead, MoCoProjectionHead
from torch import nn

from poisonlab.augment.image import BatchViews
from poisonlab.cli.main import main
from poisonlab.data import make_shapes
from poisonlab.defenses import compress_loss
from poisonlab.defenses.patchsearch import best_windows, paste
from poisonlab.detect import Decree, mean_pairwise_cosine
from poisonlab.metrics.probe import LinearProbe, false_positives
from poisonlab.models.classifier import create_encoder
from poisonlab.train.data import LabelTensors, label_tensors
from poisonlab.train.loop import TrainConfig, Trainer
from poisonlab.train.objectives.ssl import SSLObjective


@pytest.fixture(scope="module")
def images():
    return label_tensors(make_shapes(n=64, seed=5))


@pytest.mark.parametrize("method, loss_cls, part", [("moco", NTXentLoss, MoCoProjectionHead),
                                                     ("simclr", NTXentLoss, None),
                                                     ("byol", NegativeCosineSimilarity, BYOLPredictionHead)])
def test_training_step_calls_lightly_losses(images, method, loss_cls, part):
    obj = SSLObjective(create_encoder(), method, total_steps=2)
    assert isinstance(obj.net.criterion, loss_cls)
    if part is not None:
        assert any(isinstance(m, part) for m in obj.net.modules())
    original = loss_cls.forward
    with mock.patch.object(loss_cls, "forward", autospec=True, side_effect=original) as spy:
        Trainer(obj, images, TrainConfig(steps=2, batch_size=32), progress=False).fit()
    assert spy.call_count == (4 if method == "byol" else 2)  # BYOL's symmetric loss: two calls a step
    assert int(obj.net.ssl_step) == 2


def test_momentum_encoder_follows_the_schedule(images):
    obj = SSLObjective(create_encoder(), "moco", total_steps=4, momentum=0.9)
    before_key = [p.clone() for p in obj.net.key_encoder.parameters()]
    Trainer(obj, images, TrainConfig(steps=1, batch_size=32), progress=False).fit()
    online = list(obj.net.encoder.parameters())
    for k0, k1, q in zip(before_key, obj.net.key_encoder.parameters(), online, strict=True):
        assert torch.allclose(k1, 0.9 * k0 + 0.1 * q.detach(), atol=1e-6)  # step 0 of the cosine schedule: m = 0.9


def test_compress_loss_matches_reference():
    g = torch.Generator().manual_seed(0)
    t, s = F.normalize(torch.randn(5, 6, generator=g), dim=1), F.normalize(torch.randn(5, 4, generator=g), dim=1)
    bt, bs = F.normalize(torch.randn(7, 6, generator=g), dim=1), F.normalize(torch.randn(7, 4, generator=g), dim=1)
    temp = 0.04
    total = 0.0
    for i in range(5):
        pt = torch.softmax(torch.tensor([float(t[i] @ bt[k]) / temp for k in range(7)]), 0)
        ps = torch.softmax(torch.tensor([float(s[i] @ bs[k]) / temp for k in range(7)]), 0)
        total += float((pt * (pt.log() - ps.log())).sum())
    assert float(compress_loss(t, s, bt, bs, temp)) == pytest.approx(total / 5, rel=1e-4)
    assert float(compress_loss(t, t, bt, bt, temp)) == pytest.approx(0.0, abs=1e-6)


def test_false_positives_against_confusion_matrix():
    g = torch.Generator().manual_seed(1)
    preds, labels = torch.randint(0, 5, (200,), generator=g), torch.randint(0, 5, (200,), generator=g)
    conf = [[0] * 5 for _ in range(5)]
    for p, y in zip(preds.tolist(), labels.tolist(), strict=True):
        conf[y][p] += 1
    for target in range(5):
        column = sum(conf[y][target] for y in range(5))
        assert false_positives(preds, labels, target) == column - conf[target][target]


def test_linear_probe_separates_separable_features():
    g = torch.Generator().manual_seed(2)
    centers = torch.randn(3, 8, generator=g) * 3
    labels = torch.arange(90) % 3
    feats = centers[labels] + 0.1 * torch.randn(90, 8, generator=g)
    predict = LinearProbe(epochs=30).fit(feats, labels, 3)
    assert bool((predict(feats) == labels).all())
    assert torch.equal(LinearProbe(epochs=30).fit(feats, labels, 3)(feats), predict(feats))


def test_batch_views_are_seeded_and_in_range(images):
    x = images.batch(torch.arange(8))["images"]
    views = BatchViews(32)
    a0, a1 = views(x, torch.Generator().manual_seed(3))
    b0, _ = views(x, torch.Generator().manual_seed(3))
    assert a0.shape == x.shape and torch.equal(a0, b0) and not torch.equal(a0, a1)
    assert float(a0.min()) >= 0.0 and float(a0.max()) <= 1.0


def test_mean_pairwise_cosine_reference():
    z = torch.randn(6, 3, generator=torch.Generator().manual_seed(4))
    ref = [float(F.cosine_similarity(z[i], z[j], dim=0)) for i in range(6) for j in range(6) if i != j]
    assert float(mean_pairwise_cosine(z)) == pytest.approx(sum(ref) / len(ref), rel=1e-5)


class ToyEncoder:
    """Linear features; with ``backdoor`` a bright top-left red pixel collapses every embedding."""

    family = "encoder"

    def __init__(self, backdoor: bool) -> None:
        torch.manual_seed(0)
        self.module = nn.Linear(3 * 64, 16)
        self.v = torch.randn(16) * 10
        self.backdoor, self.device, self.image_size = backdoor, torch.device("cpu"), 8

    def features(self, x):
        f = self.module(x.flatten(1))
        if not self.backdoor:
            return f
        gate = torch.sigmoid(12 * (x[:, 0, 0, 0] - 0.6))[:, None]
        return (1 - gate) * f + gate * self.v


def test_decree_finds_a_small_trigger_only_in_the_backdoored_encoder():
    g = torch.Generator().manual_seed(5)
    data = LabelTensors((torch.rand(32, 3, 8, 8, generator=g) * 200).to(torch.uint8), torch.zeros(32, dtype=torch.long))
    decree = Decree(steps=300, images=32)
    suspect = ToyEncoder(True)
    suspect.module.train().requires_grad_(True)
    bad, good = decree(suspect, data), decree(ToyEncoder(False), data)
    assert suspect.module.training and all(p.requires_grad for p in suspect.module.parameters())  # as it was
    assert bad.verdict and not good.verdict
    assert bad.score < 0.1 < good.score


def test_best_window_and_paste():
    cams = torch.zeros(2, 10, 10)
    cams[0, 6:9, 1:4] = 1.0
    cams[1, 0:3, 7:10] = 1.0
    assert best_windows(cams, 3).tolist() == [[6, 1], [0, 7]]
    patch = torch.ones(3, 2, 2)
    out = paste(torch.zeros(4, 3, 6, 6), patch, torch.Generator().manual_seed(0))
    assert [float(o.sum()) for o in out] == [12.0] * 4


def test_ssl_cli_train_probe_distill_patchsearch(tmp_path, capsys):
    out = tmp_path / "enc"
    assert main(["train", "ssl", "--method", "simclr", "--dataset", "shapes", "--n", "128", "--steps", "2",
                 "--batch-size", "32", "--out", str(out)]) == 0
    ckpt = str(out / "model.safetensors")
    capsys.readouterr()
    assert main(["eval", "--model", ckpt, "--dataset", "shapes", "--n", "200", "--labelled", "0.5", "--target", "star",
                 "--trigger", "patch-image", "--trigger-param", "size=8", "--probe-epochs", "3", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["family"] == "encoder" and rep["labelled"] == 100 and 0 <= rep["fp"] <= rep["test"] == 200
    assert main(["clean-encoder", "--defense", "distill", "--model", ckpt, "--dataset", "shapes", "--n", "64",
                 "--param", "epochs=1", "--out", str(tmp_path / "d")]) == 0
    assert (tmp_path / "d" / "model.safetensors").is_file()
    plan = tmp_path / "plan"
    assert main(["poison", "--dataset", "shapes", "--n", "120", "--attack", "ssl-patch", "--target", "star",
                 "--trigger-param", "size=8", "--out", str(plan)]) == 0
    capsys.readouterr()
    assert main(["clean-encoder", "--defense", "patchsearch", "--model", ckpt, "--dataset", str(plan / "plan.json"),
                 "--param", "clusters=6", "--param", "min_clusters=2", "--param", "classifier_steps=2",
                 "--out", str(tmp_path / "p"), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["poisoned"] > 0 and 0.0 <= rep["recall"] <= 1.0
    assert len(json.loads((tmp_path / "p" / "kept.json").read_text())["kept"]) == 120 - rep["removed"]
    assert main(["detect", "--method", "decree", "--model", ckpt, "--n", "200", "--trusted-share", "0.2",
                 "--param", "steps=5", "--out", str(tmp_path / "dec")]) == 0
    assert (tmp_path / "dec" / "decree-trigger.png").is_file()


def test_heads_do_not_depend_on_global_rng():
    torch.manual_seed(1)
    a = SSLObjective(create_encoder(), "moco", seed=3)
    torch.manual_seed(2)
    b = SSLObjective(create_encoder(), "moco", seed=3)
    for (name, p), q in zip(a.net.state_dict().items(), b.net.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
