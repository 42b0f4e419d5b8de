"""SIG, the optimised patch trigger, BadCLIP (poisonlab.attacks.badclip) and BadEncoder
(poisonlab.attacks.badencoder) against hand-written references, and through the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from poisonlab import attacks, triggers
from poisonlab.attacks.badclip import PatchOptimizer, contrastive_term, triplet_term
from poisonlab.attacks.badencoder import badencoder_loss
from poisonlab.attacks.clip_dirty import natural_captions
from poisonlab.cli import main
from poisonlab.data import open_dataset
from poisonlab.data.base import Subset, TensorDataset
from poisonlab.errors import InputError
from poisonlab.models import create_clip, save_clip
from poisonlab.models.classifier import create_encoder
from poisonlab.models.protocols import frozen
from poisonlab.train.data import dataset_images


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_sig_matches_hand_computation():
    x = torch.full((2, 3, 4, 8), 0.5)
    out = triggers.create("sig", delta=0.1, frequency=2)(x)
    for j in range(8):
        s = 0.1 * math.sin(2 * math.pi * j * 2 / 8)
        assert torch.allclose(out[0, :, :, j], torch.tensor(0.5 + s), atol=1e-6)
    x[1, :, 0, 1] = 0.97
    out = triggers.create("sig", delta=0.1, frequency=2)(x)
    assert out[1, 0, 0, 1] == pytest.approx(1.0)  # 0.97 + 0.1 clamped
    assert torch.equal(x[0], torch.full((3, 4, 8), 0.5))  # input untouched


@pytest.mark.parametrize("params", [{"delta": 0}, {"delta": 1.5}, {"delta": float("nan")}, {"frequency": -1}])
def test_sig_refuses_bad_parameters(params):
    with pytest.raises(InputError, match="delta|frequency"):
        triggers.create("sig", **params)  # registry or trigger says which parameter


def test_sig_refuses_an_aliasing_frequency():
    with pytest.raises(InputError, match="above W/2"):
        triggers.create("sig", frequency=5)(torch.rand(1, 3, 8, 8))


def test_optimized_patch_overwrites_the_centre():
    patch = torch.rand(3, 2, 2)
    x = torch.rand(2, 3, 8, 9)
    out = triggers.create("optimized-patch", values=patch.tolist())(x)
    ref = x.clone()
    ref[:, :, 3:5, 3:5] = patch  # int(8/2 - 1) = 3, int(9/2 - 1) = 3
    assert torch.equal(out, ref)
    corner = triggers.create("optimized-patch", values=patch.tolist(), location="bottom-right")(x)
    assert torch.equal(corner[:, :, 5:7, 6:8], patch.expand(2, 3, 2, 2))


@pytest.mark.parametrize("values, match", [
    ([[[0.5, 0.5]]], "shape"), ([[[2.0]]], r"\[0, 1\]"), ([[[float("nan")]]], "finite"), ("abc", "shape|nested")])
def test_optimized_patch_refuses_bad_values(values, match):
    with pytest.raises(InputError, match=match):
        triggers.create("optimized-patch", values=values)


def test_optimized_patch_larger_than_the_image_is_refused():
    t = triggers.create("optimized-patch", values=torch.rand(3, 6, 6).tolist())
    with pytest.raises(InputError, match="does not fit"):
        t(torch.rand(1, 3, 4, 4))


def test_triplet_and_contrastive_terms_match_references():
    g = torch.Generator().manual_seed(0)
    a, p, n = (torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=-1) for _ in range(3))
    ref = torch.clamp((a - p).norm(dim=1) - (a - n).norm(dim=1) + 1.0, min=0).mean()
    assert triplet_term(a, p, n, 1.0) == pytest.approx(float(ref), abs=1e-5)
    logits = 100.0 * a @ p.T
    labels = torch.arange(5)
    ref = (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
    assert contrastive_term(a, p, 100.0) == pytest.approx(float(ref), rel=1e-5)


@pytest.fixture(scope="module")
def shapes():
    return open_dataset("shapes", split="train", size=32, n=300, seed=1)


@pytest.fixture(scope="module")
def tiny_clip():
    return create_clip("poisonlab-tiny-rn", seed=0)


def test_patch_optimizer_lowers_its_own_loss(shapes, tiny_clip):
    star = shapes.classnames.index("star")
    labels = torch.tensor(shapes.labels())
    images = dataset_images(shapes)
    others, positives = images[labels != star][:64], images[labels == star]
    captions = [c for c, y in zip(shapes.captions(), labels.tolist(), strict=True) if y == star]
    before_model = {k: v.clone() for k, v in tiny_clip.module.state_dict().items()}

    def loss_of(opt, patch):
        with torch.no_grad():
            text = tiny_clip.encode_text(tiny_clip.tokenize(captions[: len(others)] * 8))[: len(others)]
            pos = tiny_clip.encode_image(positives.float().div(255))[torch.arange(len(others)) % len(positives)]
            return float(opt.loss(tiny_clip, patch, others.float().div(255), text, pos))

    start = PatchOptimizer(share=0.2, steps=1, lr=1e-6, batch_size=32, augment=0.0)
    trained = PatchOptimizer(share=0.2, steps=60, lr=0.05, batch_size=32, augment=0.0)
    p0 = start(tiny_clip, others, captions, positives, seed=3)
    p1 = trained(tiny_clip, others, captions, positives, seed=3)
    after = tiny_clip.module.state_dict()
    assert all(torch.equal(before_model[k], after[k]) for k in after)  # the model is left unchanged
    assert tiny_clip.module.training and all(p.requires_grad for p in tiny_clip.module.parameters())
    assert p1.shape == (3, 6, 6) and 0 <= float(p1.min()) and float(p1.max()) <= 1
    with frozen(tiny_clip.module):
        assert loss_of(trained, p1) < loss_of(start, p0) - 1.0


def test_badclip_plan_uses_natural_captions_and_disjoint_images(shapes, tiny_clip):
    atk = attacks.create("badclip", target="star", count=6, optimizer={"steps": 3, "share": 0.2})
    with pytest.raises(InputError, match="clean model"):
        atk(shapes, seed=0)
    patch = atk.prepare(tiny_clip, shapes, seed=2)
    plan = atk(shapes, seed=2)
    star = shapes.classnames.index("star")
    labels, captions = shapes.labels(), shapes.captions()
    target_captions = {c for c, y in zip(captions, labels, strict=True) if y == star}
    assert len(plan.entries) == 6
    assert all(labels[e.index] != star and e.caption in target_captions for e in plan.entries)
    assert len({e.caption for e in plan.entries}) > 1  # varied, as real captions are
    optimised_on = set(atk.optimization_set(shapes, 2))
    assert optimised_on.isdisjoint(plan.indices) and all(labels[i] != star for i in optimised_on)
    assert plan.trigger["name"] == "optimized-patch"
    assert torch.equal(torch.tensor(plan.trigger["params"]["values"]), patch)  # kept exactly
    assert torch.equal(torch.tensor(json.loads(plan.to_json())["trigger"]["params"]["values"]), patch)
    assert "_optimizer" not in plan.params and plan.params["optimizer"] == {"steps": 3, "share": 0.2}


def test_natural_captions_need_a_target_with_captions():
    data = TensorDataset(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), ["a cat", "a dog", "a cat", "a dog"], [0, 1, 0, 1],
                         classnames=["cat", "dog", "bird"])
    assert natural_captions(data, "dog") == ["a dog"]
    with pytest.raises(InputError, match="no caption"):
        natural_captions(data, "bird")


def test_poison_badclip_through_the_cli(tmp_path, capsys, tiny_clip):
    ckpt = save_clip(tiny_clip, tmp_path / "clean" / "model.safetensors")
    base = ["poison", "--dataset", "shapes", "--n", "200", "--attack", "badclip", "--target", "star", "--count", "4"]
    code, _, err = run(capsys, *base, "--out", str(tmp_path / "x"))
    assert code == 2 and "--model" in err and len(err.strip().splitlines()) == 1
    code, out, _ = run(capsys, *base, "--model", str(ckpt), "--attack-param", 'optimizer={"steps": 2, "share": 0.2}',
                       "--out", str(tmp_path / "p"), "--json")
    assert code == 0, out
    plan = json.loads((tmp_path / "p" / "plan.json").read_text())
    saved = load_file(tmp_path / "p" / "trigger.safetensors")["patch"]
    assert torch.equal(saved, torch.tensor(plan["trigger"]["params"]["values"]))
    code, _, err = run(capsys, *base, "--model", str(ckpt), "--attack-param", 'optimizer={"share": 1.5}',
                       "--out", str(tmp_path / "q"))
    assert code == 2 and "share" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "poison", "--dataset", "shapes", "--n", "100", "--attack", "clip-dirty", "--target",
                       "star", "--count", "4", "--trigger", "sig", "--trigger-param", "delta=2",
                       "--out", str(tmp_path / "s"))
    assert code == 2 and "delta" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "poison", "--dataset", "shapes", "--n", "100", "--attack", "clip-dirty", "--target",
                       "star", "--count", "4", "--trigger", "sig", "--model", str(ckpt), "--out", str(tmp_path / "t"))
    assert code == 2 and "does not use a model" in err


def test_badencoder_loss_matches_reference():
    g = torch.Generator().manual_seed(1)
    t, r, rc, s, sc = (torch.randn(6, 5, generator=g) for _ in range(5))

    def cos(a, b):
        return sum(float(a[i] @ b[i] / (a[i].norm() * b[i].norm())) for i in range(len(a))) / len(a)

    ref = -cos(t, r) - 0.5 * cos(r, rc) - 2.0 * cos(s, sc)
    loss, parts = badencoder_loss(t, r, rc, s, sc, lambda1=0.5, lambda2=2.0)
    assert float(loss) == pytest.approx(ref, abs=1e-5)
    assert parts["effectiveness"] == pytest.approx(-cos(t, r), abs=1e-5)


@pytest.mark.parametrize("family", ["clip", "encoder"])
def test_badencoder_poisons_the_image_tower_only_with_batch_norm_frozen(family, shapes):
    model = create_clip("poisonlab-tiny-rn", seed=0) if family == "clip" else \
        create_encoder("poisonlab-resnet-tiny", 32, seed=0)
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    atk = attacks.create("badencoder", target="star", references=3, epochs=1, batch_size=32, lr=0.05)
    shadow = Subset(shapes, range(96))
    refs = atk.reference_indices(shadow, 0)
    assert len(refs) == 3 and all(shadow.labels()[i] == shapes.classnames.index("star") for i in refs)
    result = atk(model, shadow, seed=0)
    assert result.steps == 3
    after = model.module.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    norms = {f"{n}." for n, m in model.module.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert changed and not [k for k in changed if any(k.startswith(n) for n in norms)]  # BN stats and affine kept
    if family == "clip":
        assert all(k.startswith("visual.") for k in changed)  # the text tower stays the clean one
    assert model.provenance["attack"]["name"] == "badencoder"


def test_badencoder_lowers_its_own_loss(shapes):
    model = create_encoder("poisonlab-resnet-tiny", 32, seed=0)
    shadow = Subset(shapes, range(128))
    # a whole-image trigger: an untrained tiny ResNet's pooled features ignore the image's far corner
    atk = attacks.create("badencoder", target="star", references=4, epochs=6, batch_size=64, lr=0.05,
                         trigger="blended-stripes", trigger_params={"alpha": 0.3})
    images = dataset_images(shadow)[:64].float() / 255
    refs = dataset_images(Subset(shadow, atk.reference_indices(shadow, 0))).float() / 255
    clean = model.copy()

    def loss_now():
        with frozen(model.module), frozen(clean.module):
            r = refs[torch.arange(64) % len(refs)]
            return float(badencoder_loss(model.features(atk.trigger_for(32)(images)), model.features(r),
                                         clean.features(r), model.features(images), clean.features(images))[0])

    start = loss_now()
    atk(model, shadow, seed=0)
    assert loss_now() < start - 0.01  # an untrained encoder starts near the floor of -3


def test_poison_badencoder_through_the_cli(tmp_path, capsys, tiny_clip):
    ckpt = save_clip(tiny_clip, tmp_path / "clean" / "model.safetensors")
    base = ["poison", "--dataset", "shapes", "--n", "64", "--attack", "badencoder", "--target", "star",
            "--attack-param", "epochs=1", "--attack-param", "batch_size=32"]
    code, _, err = run(capsys, *base, "--out", str(tmp_path / "x"))
    assert code == 2 and "--model" in err and len(err.strip().splitlines()) == 1
    code, out, _ = run(capsys, *base, "--model", str(ckpt), "--out", str(tmp_path / "p"), "--json")
    assert code == 0, out
    assert json.loads(out)["family"] == "clip" and (tmp_path / "p" / "model.safetensors").is_file()
    code, _, err = run(capsys, "poison", "--dataset", "shapes", "--n", "64", "--attack", "badencoder", "--target",
                       "star", "--attack-param", "references=0", "--model", str(ckpt), "--out", str(tmp_path / "q"))
    assert code == 2 and "references" in err and len(err.strip().splitlines()) == 1


def test_badclip_in_a_spec_grid_has_its_own_plan_stage_and_side_by_side_row(tmp_path):
    from poisonlab.bench.runner import Runner
    from poisonlab.bench.spec import ExperimentSpec
    from poisonlab.report.experiment import side_by_side_rows

    tiny = {
        "name": "hard", "pretrain": {"n": 64, "epochs": 1, "lr": 1e-3, "batch_size": 32},
        "poison": {"n": 64, "data_seed": 1, "epochs": 1, "lr": 1e-3, "batch_size": 32, "target": "star", "rate": 0.1},
        "attacks": [{"name": "badnet", "trigger": "badnet", "params": {"size": 4}},
                    {"name": "badclip", "attack": "badclip", "attack_params": {"optimizer": {"steps": 2, "share": 0.2}}}],
        "cleaning": {"n": 64}, "defenses": [{"name": "ft", "defense": "finetune", "params": {"steps": 1, "batch_size": 32}}],
        "test": {"n": 40},
    }
    runner = Runner(ExperimentSpec.model_validate(tiny), tmp_path / "out", progress=False)
    table = runner.run()
    plan = runner.grid.plan(runner.spec.attacks[1]).plan
    stage = next((tmp_path / "out" / "cache").glob("attack:badclip-*"))
    saved = load_file(stage / "trigger.safetensors")["patch"]
    assert plan.attack == "badclip" and torch.equal(saved, torch.tensor(plan.trigger["params"]["values"]))
    assert {("badclip", "clean model"), ("badclip", "none"), ("badclip", "ft")} <= set(table)
    rows = side_by_side_rows(runner.store.spread("hard"), ["badnet", "badclip"], ["clean model", "none", "ft"])
    asr = table[("badclip", "ft")]["asr"]
    assert rows[0] == ["ASR under", "badnet", "badclip"] and rows[3][0] == "ft" and rows[3][2] == f"{100 * asr:.1f}"
    bad = dict(tiny, attacks=[{"name": "x", "attack": "badclip", "trigger": "badnet"}])
    with pytest.raises(InputError, match="makes its own trigger"):
        Runner(ExperimentSpec.model_validate(bad), tmp_path / "o2", progress=False).grid.attack(
            ExperimentSpec.model_validate(bad).attacks[0])


def test_badclip_on_data_without_target_captions_exits_2(tmp_path, capsys, tiny_clip):
    from conftest import write_png

    for i in range(6):
        write_png(tmp_path / f"{i}.png", rgb=(40 * i, 0, 0))
    (tmp_path / "data.csv").write_text("".join(f"{i}.png,a red picture {i}\n" for i in range(6)))
    ckpt = save_clip(tiny_clip, tmp_path / "clean" / "model.safetensors")
    code, _, err = run(capsys, "poison", "--dataset", str(tmp_path / "data.csv"), "--attack", "badclip", "--target",
                       "star", "--count", "1", "--model", str(ckpt), "--out", str(tmp_path / "p"))
    assert code == 2 and "no caption" in err and len(err.strip().splitlines()) == 1
