from __future__ import annotations

import pytest
import torch

from poisonlab import attacks, triggers
from poisonlab.attacks import PoisonedDataset, PoisonPlan
from poisonlab.data import make_shapes
from poisonlab.errors import InputError
from poisonlab.utils.seeding import make_generator

DATA = make_shapes(n=300, seed=5)
STAR = DATA.classnames.index("star")

CASES = {
    "badclip": dict(target="star", count=6, patch=torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0)).tolist()),
    "clip-dirty": dict(target="star", trigger="badnet", rate=0.05),
    "clip-label-consistent": dict(target="star", trigger="blended", count=6),
    "label-flip": dict(target="star", trigger="wanet", rate=0.1),
    "ssl-patch": dict(target="star", rate=0.5),
    "text-attack-1": dict(source="circle", count=5),
    "text-attack-2": dict(source="circle", target="star", count=7),
    "text-attack-3": dict(goals=["circle:star", "ring:heart"], count=9),
}


def expected_count(name: str) -> int:
    stars = sum(y == STAR for y in DATA.labels())
    return {"badclip": 6, "clip-dirty": 15, "clip-label-consistent": 6, "label-flip": 30, "ssl-patch": round(0.5 * stars),
            "text-attack-1": 5, "text-attack-2": 7, "text-attack-3": 9}[name]


def test_every_attack_has_a_case():
    """Every attack that makes a plan (model-poisoning attacks are in tests/test_modern_attacks.py)."""
    assert sorted(CASES) == [n for n in attacks.available() if attacks.ATTACKS.entry(n).kind != "model"]
    assert [e.name for e in attacks.ATTACKS.entries(kind="model")] == ["badencoder"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_properties(name):
    plan = attacks.create(name, **CASES[name])(DATA, seed=1)
    assert len(plan.entries) == len(set(plan.indices)) == expected_count(name)
    poisoned = PoisonedDataset(DATA, plan)
    chosen = set(plan.indices)
    for i in range(len(DATA)):
        img, cap, lab = poisoned[i]
        clean = DATA[i]
        assert 0 <= img.min() and img.max() <= 1
        if i not in chosen:
            assert torch.equal(img, clean[0]) and cap == clean[1] and lab == clean[2]
    i = plan.indices[0]
    assert not torch.equal(poisoned[i][0], DATA[i][0]) or poisoned[i][1] != DATA[i][1]
    again = attacks.create(name, **CASES[name])(DATA, seed=1)
    assert again.to_json() == plan.to_json()
    assert torch.equal(PoisonedDataset(DATA, again)[i][0], poisoned[i][0])
    other = attacks.create(name, **CASES[name])(DATA, seed=2)
    assert other.indices != plan.indices


def test_clip_dirty_reference():
    plan = attacks.create("clip-dirty", **CASES["clip-dirty"])(DATA, seed=3)
    poisoned = PoisonedDataset(DATA, plan)
    trig = triggers.create("badnet")
    for i in plan.indices:
        assert DATA.labels()[i] != STAR
        image, caption, label = poisoned[i]
        ref = trig(DATA[i][0][None], generator=make_generator("poison", 3, i))[0]
        assert torch.equal(image, ref)
        assert caption in [t.format("star") for t in DATA.templates] and label == STAR
    single = attacks.create("clip-dirty", target="star", count=5, template="a photo of a {}.")(DATA, seed=3)
    assert {e.caption for e in single.entries} == {"a photo of a star."}


def test_label_consistent_keeps_captions():
    plan = attacks.create("clip-label-consistent", **CASES["clip-label-consistent"])(DATA, seed=0)
    poisoned = PoisonedDataset(DATA, plan)
    for i in plan.indices:
        assert DATA.labels()[i] == STAR and poisoned[i][1] == DATA[i][1]


def test_text_attack_1_single_image():
    plan = attacks.create("text-attack-1", source="circle", count=5, target_index=7)(DATA, seed=0)
    poisoned = PoisonedDataset(DATA, plan)
    circle = DATA.classnames.index("circle")
    for i in plan.indices:
        assert DATA.labels()[i] == circle
        assert torch.equal(poisoned[i][0], DATA[7][0]) and poisoned[i][1] == DATA[i][1]


def test_text_attack_2_cycles_target_images():
    plan = attacks.create("text-attack-2", source="circle", target="star", count=7)(DATA, seed=0)
    sources = [e.image_from for e in plan.entries]
    assert all(DATA.labels()[j] == STAR for j in sources)
    assert len(set(sources)) == min(7, sum(y == STAR for y in DATA.labels()))


def test_text_attack_3_splits_budget():
    plan = attacks.create("text-attack-3", goals=["circle:star", "ring:heart"], count=9)(DATA, seed=0)
    by_source = {}
    for e in plan.entries:
        by_source.setdefault(DATA.classnames[DATA.labels()[e.index]], []).append(DATA.classnames[DATA.labels()[e.image_from]])
    assert sorted(len(v) for v in by_source.values()) == [4, 5]
    assert set(by_source["circle"]) == {"star"} and set(by_source["ring"]) == {"heart"}


def test_ssl_patch_only_target_class_and_no_label_change():
    plan = attacks.create("ssl-patch", target="star")(DATA, seed=0)
    assert all(DATA.labels()[i] == STAR for i in plan.indices)
    assert all(e.label is None and e.caption is None for e in plan.entries)


def test_plan_roundtrip(tmp_path):
    plan = attacks.create("text-attack-2", source="circle", target="star", count=3)(DATA, seed=0)
    plan.save(tmp_path / "p.json")
    assert PoisonPlan.load(tmp_path / "p.json") == plan
    (tmp_path / "bad.json").write_text('{"format": "x"}')
    with pytest.raises(InputError):
        PoisonPlan.load(tmp_path / "bad.json")


@pytest.mark.parametrize("params", [
    dict(target="star", rate=0.0), dict(target="star", rate=1.5), dict(target="banana", rate=0.1),
    dict(target="star", rate=0.1, count=3), dict(target="star", count=10_000),
])
def test_bad_input(params):
    with pytest.raises(InputError):
        attacks.create("clip-dirty", **params)(DATA, seed=0)


def test_unknown_attack_lists_names():
    with pytest.raises(InputError, match="clip-dirty"):
        attacks.create("nope")
