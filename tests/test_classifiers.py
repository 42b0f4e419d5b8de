from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from poisonlab import defenses, detect, triggers
from poisonlab.cli.main import main
from poisonlab.data import make_shapes
from poisonlab.defenses.pivotal import (
    PivotalObjective,
    distillation,
    latent_loss,
    parameter_distance,
)
from poisonlab.detect.population import roc
from poisonlab.errors import InputError
from poisonlab.metrics.classifier_eval import ClassifierEvaluator
from poisonlab.models.classifier import create_classifier, load_classifier, save_classifier
from poisonlab.train.data import LabelTensors, label_tensors


def latent_reference(z, zp, y):
    """The latent term written with plain loops over class pairs."""
    classes = sorted(set(y.tolist()))
    c = [z[y == k].mean(0) for k in classes]
    p = [zp[y == k].mean(0) for k in classes]
    orth, n_off = 0.0, 0
    for i in range(len(classes)):
        for j in range(len(classes)):
            if i != j:
                orth += float(F.cosine_similarity(c[i], c[j], dim=0)) ** 2
                n_off += 1
    align, n_pairs = 0.0, 0
    for i in range(len(classes)):
        for j in range(i + 1, len(classes)):
            align += float(F.cosine_similarity(c[i] - c[j], p[i] - p[j], dim=0))
            n_pairs += 1
    return orth / n_off + align / n_pairs


def test_latent_loss_matches_reference_and_masks_the_diagonal():
    g = torch.Generator().manual_seed(0)
    z, zp = torch.randn(30, 8, generator=g), torch.randn(30, 8, generator=g)
    y = torch.randint(0, 4, (30,), generator=g)
    got = float(latent_loss(z, zp, y))
    assert got == pytest.approx(latent_reference(z, zp, y), abs=1e-5)
    # the diagonal (cos = 1 for each centroid with itself) must not be in the orthogonality mean
    k = len(y.unique())
    c = torch.stack([z[y == i].mean(0) for i in y.unique()])
    cn = F.normalize(c, dim=1)
    with_diagonal = float((cn @ cn.T).pow(2).mean())
    without = float((cn @ cn.T)[~torch.eye(k, dtype=torch.bool)].pow(2).mean())
    assert with_diagonal != pytest.approx(without)
    assert got - latent_reference(z, zp, y) == pytest.approx(0.0, abs=1e-5)
    # identical tuned and pivot features: every direction aligned (cos 1)
    assert float(latent_loss(z, z, y)) == pytest.approx(without + 1.0, abs=1e-5)
    # a single class has no geometry
    assert float(latent_loss(z, zp, torch.zeros(30, dtype=torch.long))) == 0.0


def test_parameter_distance_and_distillation_match_reference():
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    ref = sum(float(((p - q) ** 2).sum().detach()) for p, q in zip(a.parameters(), b.parameters(), strict=True)) / 8
    assert float(parameter_distance(a, b).detach()) == pytest.approx(ref, rel=1e-6)
    assert float(parameter_distance(a, a).detach()) == 0.0
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    temp = 2.0
    pt, ps = F.softmax(t / temp, 1), F.softmax(s / temp, 1)
    ref = float((pt * (pt.log() - ps.log())).sum(1).mean()) * temp**2
    assert float(distillation(s, t, temp)) == pytest.approx(ref, rel=1e-5)


@pytest.fixture(scope="module")
def small():
    data = make_shapes(n=120, seed=3)
    model = create_classifier(num_classes=10, classnames=data.classnames, seed=0)
    return model, label_tensors(data)


def test_pivotal_loss_is_the_sum_of_its_terms(small):
    model, data = small
    cfg = defenses.create("pivotal-tuning", family="classifier", augment=False, l_latent=0.3, l_param=50.0)
    tuned, pivot = model.copy(), model.copy()
    with torch.no_grad():
        for p in tuned.module.parameters():
            p.add_(0.01)
    pivot.module.eval()
    obj = PivotalObjective(tuned, pivot, cfg, None, 0.0)
    batch = data.batch(torch.arange(40))
    loss, parts = obj.loss(batch, torch.Generator().manual_seed(0))
    z = tuned.features(batch["images"])
    with torch.no_grad():
        zp = pivot.features(batch["images"])
    ref = (F.cross_entropy(tuned.head(z), batch["labels"]) + 0.3 * latent_loss(z, zp, batch["labels"])
           + 50.0 * parameter_distance(tuned.module, pivot.module))
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    assert parts["param"] == pytest.approx(1e-4, rel=1e-3)


@pytest.mark.parametrize("method", ["pivotal-tuning", "finetune"])
def test_repair_with_zero_steps_returns_the_model_unchanged(small, method):
    model, data = small
    result = defenses.create(method, family="classifier", steps=0).run(model, data)
    assert result.report["steps"] == 0
    for (k, a), b in zip(model.module.state_dict().items(), result.model.module.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert result.model.module is not model.module


def test_repair_changes_the_copy_not_the_suspect(small):
    model, data = small
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    result = defenses.create("pivotal-tuning", family="classifier", steps=3, check_every=0).run(model, data)
    assert all(torch.equal(before[k], v) for k, v in model.module.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in result.model.module.state_dict().items())


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_norm_keeps_the_running_statistics(small, freeze):
    model, data = small
    result = defenses.create("finetune", family="classifier", steps=3, check_every=0, freeze_norm=freeze).run(model, data)
    stats = [k for k in model.module.state_dict() if k.endswith("running_mean")]
    assert stats
    tuned, suspect = result.model.module.state_dict(), model.module.state_dict()
    same = [torch.equal(tuned[k], suspect[k]) for k in stats]
    assert all(same) if freeze else not any(same)


def test_monitor_traces_the_repair_without_changing_it(small):
    model, data = small
    repair = defenses.create("finetune", family="classifier", steps=4, check_every=0)
    seen = []

    def monitor(clf):
        seen.append(clf)
        return {"ca": float(len(seen))}

    traced = repair.run(model, data, options=defenses.RunOptions(monitor=monitor, monitor_every=2))
    plain = repair.run(model, data)
    assert traced.report["trace"] == [{"step": 2, "ca": 1.0}, {"step": 4, "ca": 2.0}]
    assert "trace" not in plain.report
    assert all(clf is traced.model for clf in seen)
    for a, b in zip(traced.model.module.state_dict().values(), plain.model.module.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)


def test_fine_pruning_cuts_units_off_the_head(small):
    model, data = small
    result = defenses.create("fine-pruning", family="classifier", steps=2, max_prune_drop=1.0, max_prune=0.5,
                                    check_every=0).run(model, data)
    w = result.model.module.get_classifier().weight
    dead = (w == 0).all(0)
    assert int(dead.sum()) == result.report["pruned_units"] == int(0.5 * w.shape[1])


def test_trusted_indices_rejects_bad_shares():
    assert len(defenses.trusted_indices(1000, 0.01)) == 10
    assert defenses.trusted_indices(1000, 0.01, 3) == defenses.trusted_indices(1000, 0.01, 3)
    for share in (0.0, -0.1, 1.5):
        with pytest.raises(InputError, match="trusted share"):
            defenses.trusted_indices(100, share)
    with pytest.raises(InputError, match="empty trusted set"):
        defenses.trusted_indices(100, 0.001)


class Toy:
    """A linear classifier on raw pixels that the tests can read."""

    family = "classifier"

    def __init__(self, linear: nn.Linear, size: int = 8) -> None:
        self.module, self.num_classes, self.image_size = linear, linear.out_features, size
        self.device = torch.device("cpu")

    def logits(self, x):
        return self.module(x.flatten(1))


def test_evaluator_asr_and_arr_against_brute_force():
    data = make_shapes(n=60, seed=4, size=8)
    torch.manual_seed(3)
    lin = nn.Linear(3 * 64, 10)
    toy = Toy(lin)
    trig = triggers.create("patch-image", size=3, location="bottom-right")  # deterministic: no generator draws
    res = ClassifierEvaluator(toy, data).backdoor(trig, "star")
    t = data.classnames.index("star")
    hits = correct = total = 0
    for i in range(len(data)):
        x, _, y = data[i]
        xt = trig(x[None])
        with torch.no_grad():
            pred = int(lin(xt.flatten(1)).argmax())
        if y != t:
            total += 1
            hits += pred == t
            correct += pred == y
    assert res["asr"] == pytest.approx(hits / total)
    assert res["arr"] == pytest.approx(correct / total)


def _toy_pair(backdoor_gain: float):
    torch.manual_seed(0)
    clean = nn.Linear(3 * 64, 4)
    suspect = nn.Linear(3 * 64, 4)
    suspect.load_state_dict(clean.state_dict())
    with torch.no_grad():  # pixel (0, 0) of the red channel drives class 2 in the suspect only
        suspect.weight[2, 0] += backdoor_gain
    return Toy(suspect), Toy(clean)


def test_cti_scores_a_backdoor_and_nothing_when_models_agree():
    g = torch.Generator().manual_seed(0)
    data = LabelTensors((torch.rand(80, 3, 8, 8, generator=g) * 255).to(torch.uint8), torch.arange(80) % 4)
    cti = detect.create("cti", steps=40, lr=0.05)
    suspect, repaired = _toy_pair(200.0)
    suspect.module.train()
    found = cti(suspect, data, repaired=repaired)
    assert found.details["suspected_target"] == 2 and found.verdict
    assert suspect.module.training and suspect.module.weight.requires_grad  # left as the caller had it
    same = cti(repaired, data, repaired=repaired)
    assert same.details["class_scores"] == [0.0] * 4 and not same.verdict


def test_cti_perturbation_stays_in_its_l2_ball():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 3, 8, 8, generator=g)
    y = torch.arange(16) % 4
    suspect, repaired = _toy_pair(0.0)
    for rms in (0.01, 0.05):
        d = detect.create("cti", steps=30, lr=0.5, max_rms=rms).invert(suspect, repaired, x, y, target=2)
        assert float(d.norm()) <= rms * (3 * 64) ** 0.5 + 1e-5
    free = detect.create("cti", steps=30, lr=0.5, max_rms=100.0).invert(suspect, repaired, x, y, target=2)
    assert float(free.norm()) > 0.05 * (3 * 64) ** 0.5  # the bound, not the optimiser, held it


def test_neural_cleanse_anomaly_index_reference():
    norms = [10.0, 11.0, 9.0, 10.5, 1.0]
    med = 10.0
    mad = sorted(abs(v - med) for v in norms)[2] * 1.4826
    assert detect.anomaly_index(norms) == pytest.approx((med - 1.0) / mad)
    assert detect.anomaly_index([3.0, 3.0, 3.0]) == 0.0


def test_roc_auc_against_pair_counting():
    labels = [False, False, True, True, False, True]
    scores = [0.1, 0.4, 0.35, 0.8, 0.2, 0.9]
    pos = [s for s, lab in zip(scores, labels, strict=True) if lab]
    neg = [s for s, lab in zip(scores, labels, strict=True) if not lab]
    ref = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))
    assert roc(labels, scores)["auc"] == pytest.approx(ref)


def test_classifier_checkpoint_round_trip(tmp_path, small):
    model, data = small
    path = save_classifier(model, tmp_path / "m.safetensors")
    loaded = load_classifier(path)
    x = data.batch(torch.arange(4))["images"]
    model.module.eval()
    loaded.module.eval()
    assert torch.equal(model.logits(x), loaded.logits(x))
    assert loaded.classnames == model.classnames
    with pytest.raises(InputError, match="classes"):
        load_classifier(path, num_classes=3)


def test_train_repair_detect_cli(tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["train", "classifier", "--dataset", "shapes", "--n", "256", "--steps", "3", "--batch-size", "64",
                 "--out", str(out)]) == 0
    ckpt = str(out / "model.safetensors")
    capsys.readouterr()
    assert main(["repair", "--method", "finetune", "--model", ckpt, "--dataset", "shapes", "--n", "400",
                 "--trusted-share", "0.1", "--param", "steps=2", "--test-n", "50", "--trigger", "badnet",
                 "--target", "star", "--trace-every", "2", "--out", str(tmp_path / "r"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["report"]["trusted"] == 40 and math.isfinite(summary["after"]["backdoor"]["badnet"]["arr"])
    (point,) = summary["report"]["trace"]  # the last traced step is the returned model
    assert point == {"step": 2, "ca": summary["after"]["ca"], "asr:badnet": summary["after"]["backdoor"]["badnet"]["asr"]}
    assert load_classifier(tmp_path / "r" / "model.safetensors").num_classes == 10
    assert main(["detect", "--method", "neural-cleanse", "--model", ckpt, "--n", "400", "--trusted-share", "0.1",
                 "--param", "steps=2", "--out", str(tmp_path / "d"), "--json"]) == 0
    assert "score" in json.loads(capsys.readouterr().out)["neural-cleanse"]


def _folder_with_two_classes(root):
    from conftest import write_png

    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            write_png(root / name / f"{i}.png", rgb=(40 * i, 100, 200))
    return root


@pytest.mark.parametrize("args, message", [
    (["--trusted-share", "0"], "trusted share"),
    (["--trusted-share", "1.5"], "trusted share"),
    (["--trusted-share", "0.001"], "empty trusted set"),
])
def test_repair_bad_input_exit_2(tmp_path, capsys, args, message):
    model = create_classifier(num_classes=10, classnames=make_shapes(n=1).classnames)
    ckpt = save_classifier(model, tmp_path / "m.safetensors")
    code = main(["repair", "--method", "pivotal-tuning", "--model", str(ckpt), "--dataset", "shapes", "--n", "200",
                 *args, "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_repair_class_count_mismatch_exit_2(tmp_path, capsys):
    model = create_classifier(num_classes=10)
    ckpt = save_classifier(model, tmp_path / "m.safetensors")
    folder = _folder_with_two_classes(tmp_path / "folder")
    code = main(["repair", "--method", "finetune", "--model", str(ckpt), "--dataset", str(folder),
                 "--trusted-share", "1", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "10 classes but the data has 2" in err


def test_repair_and_detect_a_clip_zero_shot_classifier(tmp_path, capsys):
    from poisonlab.models import create_clip, load_clip, save_clip
    from poisonlab.models.classifier import ZeroShotClassifier

    data = make_shapes(n=60, seed=6)
    bundle = create_clip("poisonlab-tiny-rn", seed=0)
    zs = ZeroShotClassifier(bundle, data.classnames, data.templates)
    assert zs.logits(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    text_before = {k: v.clone() for k, v in bundle.model.state_dict().items() if not k.startswith("visual.")}
    result = defenses.create("pivotal-tuning", family="classifier", steps=2, check_every=0).run(zs, label_tensors(data))
    tuned = result.model.to_clip()
    assert all(torch.equal(v, tuned.model.state_dict()[k]) for k, v in text_before.items())
    assert any(not torch.equal(v, tuned.model.state_dict()[k]) for k, v in bundle.model.state_dict().items()
               if k.startswith("visual."))
    ckpt = save_clip(bundle, tmp_path / "clip.safetensors")
    assert main(["repair", "--method", "finetune", "--model", str(ckpt), "--dataset", "shapes", "--n", "200",
                 "--trusted-share", "0.2",
                 "--param", "steps=1", "--test-n", "20", "--out", str(tmp_path / "r")]) == 0
    assert load_clip(tmp_path / "r" / "model.safetensors").name == bundle.name
    capsys.readouterr()
    assert main(["detect", "--method", "cti", "--model", str(ckpt), "--n", "200", "--trusted-share", "0.2",
                 "--param", "steps=1", "--param", "images_per_class=4", "--param", 'repair={"steps": 1}',
                 "--out", str(tmp_path / "d"), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["cti"]["class_scores"]) == 10


def test_eval_reads_a_classifier_checkpoint_and_measures_ca_asr_ra(tmp_path, capsys):
    """``poisonlab eval`` on a classifier checkpoint: CA, ASR and RA computed by hand here."""
    import json

    import torch

    from poisonlab import triggers
    from poisonlab.cli import main
    from poisonlab.data import open_dataset
    from poisonlab.models.classifier import create_classifier, load_classifier, save_classifier
    from poisonlab.train.data import label_tensors

    names = open_dataset("shapes", split="test", n=10).classnames
    path = save_classifier(create_classifier("poisonlab-resnet-tiny", len(names), 32, names, seed=4),
                           tmp_path / "m" / "model.safetensors")
    assert main(["eval", "--model", str(path), "--dataset", "shapes", "--n", "60", "--trigger", "blended",
                 "--target", "star", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    clf = load_classifier(path)
    clf.module.eval()
    test = label_tensors(open_dataset("shapes", split="test", n=60), 32)
    with torch.no_grad():
        clean = clf.logits(test.images.float() / 255).argmax(1)
        g = __import__("poisonlab.utils.seeding", fromlist=["make_generator"]).make_generator("eval-trigger", 0)
        hit = clf.logits(triggers.create("blended")(test.images.float() / 255, generator=g)).argmax(1)
    star, others = names.index("star"), test.labels != names.index("star")
    assert got["family"] == "classifier"
    assert got["ca"] == float((clean == test.labels).double().mean())
    assert got["asr"] == float((hit[others] == star).double().mean())
    assert got["ra"] == float((hit[others] == test.labels[others]).double().mean())
