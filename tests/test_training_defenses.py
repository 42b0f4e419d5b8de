"""SafeCLIP and RoCLIP, the training-time defenses: their parts against small references written
here, their phases on a tiny model, exact resume, the CLI and the runner's section."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from sklearn.mixture import GaussianMixture

from poisonlab import attacks, defenses, demo
from poisonlab.attacks.plan import PoisonedDataset
from poisonlab.bench.store import ResultsStore
from poisonlab.cli import main
from poisonlab.data import open_dataset
from poisonlab.defenses.roclip import RoClipObjective, pool_matched_loss
from poisonlab.defenses.safeclip import (
    NearestNeighbourBank,
    SafeClipObjective,
    clean_probability,
    cross_view_clip_loss,
    next_share,
    safe_split,
    unimodal_loss,
)
from poisonlab.errors import InputError
from poisonlab.models import create_clip
from poisonlab.models.clip import save_clip
from poisonlab.train.data import pair_tensors
from poisonlab.train.loop import TrainConfig, Trainer
from tests.conftest import crash_on_call


def _ce_rows(logits: torch.Tensor) -> float:
    """Mean over rows of -log softmax(row)[i], written out."""
    total = 0.0
    for i in range(logits.shape[0]):
        row = [float(v) for v in logits[i]]
        top = max(row)
        total += -(row[i] - top - math.log(sum(math.exp(v - top) for v in row)))
    return total / logits.shape[0]


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


# -- the parts --------------------------------------------------------------------------------
def test_clean_probability_is_the_posterior_of_the_higher_mean_component():
    rng = np.random.default_rng(0)
    cosines = np.r_[rng.normal(0.6, 0.05, 200), rng.normal(0.1, 0.05, 20)]
    p = clean_probability(cosines)
    gmm = GaussianMixture(n_components=2, random_state=0).fit(cosines.reshape(-1, 1))
    hi = int(np.argmax(gmm.means_.ravel()))
    dens = [gmm.weights_[k] * np.exp(-(cosines - gmm.means_[k, 0]) ** 2 / (2 * gmm.covariances_[k].item()))
            / np.sqrt(2 * np.pi * gmm.covariances_[k].item()) for k in range(2)]
    np.testing.assert_allclose(p, dens[hi] / (dens[0] + dens[1]), rtol=1e-6, atol=1e-9)
    assert p[:200].min() > 0.9 and p[200:].max() < 0.1, "the low-cosine pairs are the unsafe component"


def test_safe_split_first_by_threshold_then_top_share_and_the_share_schedule():
    p = np.array([0.95, 0.2, 0.91, 0.5, 0.99, 0.91])
    safe, share = safe_split(p, None, 0.9)
    assert safe.tolist() == [True, False, True, False, True, True] and share == pytest.approx(4 / 6)
    safe, share = safe_split(p, 0.5, 0.9)  # round(0.5 * 6) = 3 highest: 0.99, 0.95, then the first 0.91
    assert safe.tolist() == [True, False, True, False, True, False] and share == 0.5
    assert next_share(0.6, 0.01, 0.85) == pytest.approx(0.61)
    assert next_share(0.845, 0.01, 0.85) == 0.85
    assert next_share(0.97, 0.01, 0.85) == 0.85, "a first split above the cap falls to it (the authors' min)"


def test_unimodal_and_clip_losses_equal_written_out_cross_entropies():
    views, neighbours, scale = _unit(5, 4, 1), _unit(5, 4, 2), torch.tensor(7.0)
    assert float(unimodal_loss(views, neighbours, scale)) == pytest.approx(_ce_rows(scale * views @ neighbours.T), rel=1e-5)
    i, t, ia, ta = (_unit(4, 3, s) for s in range(4))
    want = (_ce_rows(scale * i @ ta.T) + _ce_rows(scale * t @ ia.T)) / 2
    assert float(cross_view_clip_loss(i, t, ia, ta, scale)) == pytest.approx(want, rel=1e-5)
    matched = _unit(4, 3, 9)
    want = (_ce_rows(scale * i @ matched.T) + _ce_rows(scale * matched @ i.T)) / 2
    assert float(pool_matched_loss(i, matched, scale)) == pytest.approx(want, rel=1e-5)


def test_bank_returns_the_nearest_entry_by_cosine_and_is_first_in_first_out():
    bank = NearestNeighbourBank(size=3, dim=2, seed=0)
    assert torch.allclose(bank.bank.norm(dim=1), torch.ones(3)), "a random unit start (lightly's)"
    entries = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]])
    bank(entries, update=True)
    assert torch.equal(bank.bank, entries) and int(bank.bank_ptr) == 0
    query = torch.tensor([[0.9, 0.1], [0.1, 5.0], [-0.2, -0.3], [3.0, -2.0]])
    cos = torch.nn.functional.normalize(query, dim=1) @ torch.nn.functional.normalize(entries, dim=1).T
    assert torch.equal(bank(query, update=False), entries[cos.argmax(1)])
    assert torch.equal(bank.bank, entries), "a lookup without update leaves the bank"
    newer = torch.tensor([[1.0, 5.0], [2.0, 6.0]])
    before = bank(newer, update=True)
    assert torch.equal(before, entries[[1, 1]]), "looked up before it is enqueued"
    assert torch.equal(bank.bank, torch.cat([newer, entries[2:]])), "the oldest entries go first"
    state = bank.state_dict()
    assert {"bank", "bank_ptr"} <= set(state), "the bank is saved with the training state"
    again = NearestNeighbourBank(size=3, dim=2, seed=1)
    again.load_state_dict(state)
    assert torch.equal(again.bank, bank.bank) and int(again.bank_ptr) == int(bank.bank_ptr)


# -- the objectives on a tiny model ---------------------------------------------------------------
@pytest.fixture(scope="module")
def poisoned():
    data = open_dataset("shapes", split="train", size=32, n=192, seed=0)
    atk = attacks.create("clip-dirty", target="star", rate=0.1, trigger="badnet", trigger_params={"size": 7})
    return PoisonedDataset(data, atk(data, seed=0))


def test_safeclip_phases_learning_rate_and_split(poisoned):
    bundle = create_clip("poisonlab-tiny-rn", seed=0)
    defense = defenses.create("safeclip", unimodal_epochs=1, clip_epochs=1, clip_lr=1e-5, bank_size=64)
    objective = SafeClipObjective(bundle, defense)
    with pytest.raises(InputError, match="warm-up"):
        objective.prepare(192, 6, 12)
    with pytest.raises(InputError, match="memory bank"):
        SafeClipObjective(bundle, defenses.create("safeclip", unimodal_epochs=1, bank_size=500)).prepare(192, 6, 30)
    objective.prepare(192, 6, 24)
    assert [objective.phase(e) for e in range(4)] == ["unimodal", "clip", "split", "split"]
    assert objective.learning_rate(6, 3e-3) == 1e-5 and objective.learning_rate(12, 3e-3) == 3e-3
    data = pair_tensors(poisoned, bundle.tokenize)
    objective.start_epoch(1, data, torch.device("cpu"))
    assert int(objective.net.split_epoch) == -1 and not objective.splits, "no split during the warm-up"
    batch = data.batch(torch.arange(32))
    _, extra = objective.loss(batch, torch.Generator().manual_seed(0))
    assert extra["safe_share"] == 1.0 and "l_unimodal" not in extra, "the CLIP warm-up trains every pair with CLIP"
    objective.start_epoch(2, data, torch.device("cpu"))
    # the split again, by hand: cosines of the unaugmented pairs in eval mode, the mixture, p > 0.9
    with torch.no_grad():
        bundle.model.eval()
        out = bundle.model(bundle.normalize(data.batch(torch.arange(192))["images"]), data.tokens)
        bundle.model.train()
    cos = (out["image_features"] * out["text_features"]).sum(-1).numpy()
    want = clean_probability(cos) > 0.9
    assert objective.net.safe.numpy().tolist() == want.tolist()
    record = objective.splits[-1]
    risky, bad = ~want, data.poisoned.numpy()
    assert record["recall"] == pytest.approx((risky & bad).sum() / bad.sum())
    assert record["precision"] == pytest.approx((risky & bad).sum() / max(risky.sum(), 1))
    objective.start_epoch(2, data, torch.device("cpu"))
    assert len(objective.splits) == 1, "a resumed epoch keeps its split"
    _, extra = objective.loss(batch, torch.Generator().manual_seed(0))
    assert extra["safe_share"] == pytest.approx(float(objective.net.safe[:32].float().mean()))


def _safeclip_run(data, out, crash_at=None):
    bundle = create_clip("poisonlab-tiny-rn", seed=0)
    defense = defenses.create("safeclip", unimodal_epochs=1, clip_epochs=1, clip_lr=1e-4, bank_size=64)
    objective = SafeClipObjective(bundle, defense, seed=3)
    if crash_at is not None:
        crash_on_call(objective, crash_at)
    cfg = TrainConfig(epochs=4, batch_size=48, lr=1e-3, checkpoint_every=5, seed=5)
    trainer = Trainer(objective, data, cfg, out, save_model=lambda p: save_clip(bundle, p), progress=False)
    return bundle, objective, trainer


def test_safeclip_resumes_exactly_with_its_split_and_banks(poisoned, tmp_path):
    data = pair_tensors(poisoned, create_clip("poisonlab-tiny-rn").tokenize)
    full, objective, trainer = _safeclip_run(data, tmp_path / "full")
    trainer.fit()
    assert [s["epoch"] for s in objective.splits] == [2, 3]
    _, _, crashing = _safeclip_run(data, tmp_path / "cut", crash_at=12)  # step 12: mid-epoch 2, after the first split
    with pytest.raises(KeyboardInterrupt):
        crashing.fit()
    resumed, again, trainer = _safeclip_run(data, tmp_path / "cut")
    trainer.fit(resume=True)
    assert [s["epoch"] for s in again.splits] == [3], "the saved split of epoch 2 is used, not made again"
    for (k, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert torch.equal(objective.net.image_bank.bank, again.net.image_bank.bank)


def test_roclip_matches_every_second_epoch_and_trains_the_image_tower_there(poisoned):
    bundle = create_clip("poisonlab-tiny-rn", seed=0)
    objective = RoClipObjective(bundle, defenses.create("roclip", pool_size=64, views="none"))
    with pytest.raises(InputError, match="pool"):
        RoClipObjective(bundle, defenses.create("roclip", pool_size=193)).prepare(192, 4, 16)
    with pytest.raises(InputError, match="no epoch"):
        RoClipObjective(bundle, defenses.create("roclip", pool_size=8, every=5)).prepare(192, 4, 16)
    objective.prepare(192, 4, 16)
    assert [objective.matching(e) for e in range(4)] == [False, True, False, True]
    data = pair_tensors(poisoned, bundle.tokenize)
    batch = data.batch(torch.arange(32))
    objective.start_epoch(1, data, torch.device("cpu"))
    pool_before = objective.net.pool.bank.clone()
    loss, extra = objective.loss(batch, torch.Generator())
    assert extra["matched"] == 1.0
    with torch.no_grad():
        out = bundle.model(bundle.normalize(batch["images"]), batch["tokens"])
    cos = out["image_features"] @ torch.nn.functional.normalize(pool_before, dim=1).T
    want = pool_matched_loss(out["image_features"], pool_before[cos.argmax(1)], out["logit_scale"])
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-5), "each image against its nearest pool caption"
    assert torch.allclose(objective.net.pool.bank[:32], out["text_features"], atol=1e-6), "then its captions enter the pool"
    loss.backward()
    assert all(p.grad is None or not p.grad.any() for n, p in bundle.model.named_parameters()
               if not n.startswith("visual") and n != "logit_scale"), "the pool is detached: no text-tower gradient"
    assert any(p.grad is not None and p.grad.any() for n, p in bundle.model.named_parameters() if n.startswith("visual"))


# -- the CLI and the runner ---------------------------------------------------------------
def test_train_clip_with_safeclip_writes_its_splits_in_memory_and_streamed_alike(poisoned, tmp_path, capsys):
    plan = tmp_path / "plan"
    assert main(["poison", "--dataset", "shapes", "--n", "192", "--attack", "clip-dirty", "--trigger", "badnet",
                 "--trigger-param", "size=7", "--target", "star", "--rate", "0.1", "--out", str(plan)]) == 0
    capsys.readouterr()
    runs = {}
    for mode in ("memory", "stream"):
        code = main(["train", "clip", "--dataset", str(plan / "plan.json"), "--epochs", "4", "--batch-size", "48",
                     "--defense", "safeclip", "--defense-param", "unimodal_epochs=1", "--defense-param", "bank_size=64",
                     "--data", mode, "--workers", "0", "--out", str(tmp_path / mode), "--json"])
        assert code == 0, capsys.readouterr().err[-800:]
        runs[mode] = json.loads(capsys.readouterr().out)
        record = json.loads((tmp_path / mode / "defense.json").read_text())
        assert record == runs[mode]["defense"] and record["defense"] == "safeclip"
        assert [s["epoch"] for s in record["splits"]] == [2, 3] and all(0 <= s["recall"] <= 1 for s in record["splits"])
    assert runs["stream"]["data"]["mode"] == "stream"
    assert runs["memory"]["defense"]["splits"] == runs["stream"]["defense"]["splits"], "the split reads streamed data alike"
    weights = [load_file(tmp_path / mode / "model.safetensors") for mode in ("memory", "stream")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_runner_training_section(tmp_path):
    spec = {
        "name": "tiny",
        "pretrain": {"n": 192, "epochs": 4, "lr": 1e-3, "batch_size": 48},
        "poison": {"n": 64, "epochs": 1, "lr": 1e-3, "batch_size": 32, "target": "star", "rate": 0.1},
        "attacks": [], "cleaning": {"n": 64}, "defenses": [], "test": {"n": 40},
        "training": {
            "n": 192, "epochs": 4, "lr": 1e-3, "batch_size": 48, "rate": 0.1,
            "attacks": [{"name": "badnet", "trigger": "badnet", "params": {"size": 7}},
                        {"name": "text2", "attack": "text-attack-2", "attack_params": {"source": "square"}, "rate": 0.05}],
            "defenses": [{"name": "safeclip", "defense": "safeclip",
                          "params": {"unimodal_epochs": 1, "clip_epochs": 1, "bank_size": 64}},
                         {"name": "roclip", "defense": "roclip", "params": {"pool_size": 64}}],
        },
    }
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(spec))
    html = demo.run(str(tmp_path / "t.yaml"), tmp_path / "out", progress=False)
    store = ResultsStore(tmp_path / "out" / "results.db")
    spread = store.spread("tiny/training")
    for attack in ("badnet", "text2"):
        assert {(attack, c) for c in ("none", "filter", "safeclip", "roclip")} <= set(spread)
    assert "asr" in spread[("badnet", "none")] and "hit@10" in spread[("text2", "none")]
    assert spread[("badnet", "filter")]["removed"].mean == pytest.approx(0.2 * 192, abs=1), "twice the rate is dropped"
    assert 0 <= spread[("badnet", "safeclip")]["risky_recall"].mean <= 1
    readme = (html.parent / "README.md").read_text()
    assert "Training-time defenses: pre-training from scratch on poisoned pairs" in readme
    assert (html.parent / "safeclip_splits.png").stat().st_size > 0
