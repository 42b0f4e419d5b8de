from __future__ import annotations

import inspect
import json
import random
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F

from poisonlab import defenses
from poisonlab.attacks import PoisonedDataset, PoisonEntry, PoisonPlan
from poisonlab.augment import EDA, load_synonyms
from poisonlab.data import TensorDataset, make_shapes
from poisonlab.defenses import CleanClipObjective, ParObjective, threshold
from poisonlab.errors import InputError
from poisonlab.models import create_clip
from poisonlab.train import pair_tensors


def clip_loss_reference(img, txt, scale):
    labels = torch.arange(img.shape[0])
    logits = scale * img @ txt.T
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


@pytest.fixture(scope="module")
def setup():
    data = make_shapes(n=48, seed=2)
    suspect = create_clip("poisonlab-tiny-vit", seed=1)
    bundle = suspect.copy()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in bundle.model.named_parameters():
            if name != "logit_scale":  # the trainable copy starts from the suspect's temperature
                p.add_(0.02 * torch.randn(p.shape, generator=g))
    batch = pair_tensors(data, bundle.tokenize).batch(torch.arange(16))
    return data, suspect, bundle, batch


def test_threshold_switches_gradient():
    s = torch.tensor(1.0, requires_grad=True)
    threshold(s, 2.15).backward()
    assert s.grad == 1.0
    s = torch.tensor(3.0, requires_grad=True)
    out = threshold(s, 2.15)
    out.backward()
    assert out == 0.0 and s.grad == 0.0


def test_par_loss_matches_reference(setup):
    _, suspect, bundle, batch = setup
    obj = ParObjective(bundle, suspect, tau=2.15, weight=0.5)
    loss, extra = obj.loss(batch, torch.Generator())
    x = bundle.normalize(batch["images"])
    bundle.model.train()
    with torch.no_grad():
        i = F.normalize(bundle.model.encode_image(x), dim=-1)
        t = F.normalize(bundle.model.encode_text(batch["tokens"]), dim=-1)
        ip = F.normalize(suspect.model.encode_image(x), dim=-1)
        tp = F.normalize(suspect.model.encode_text(batch["tokens"]), dim=-1)
    s_img = ((i - ip) ** 2).sum(1).mean()
    s_txt = ((t - tp) ** 2).sum(1).mean()
    ref = clip_loss_reference(i, t, suspect.model.logit_scale.exp()) - 0.5 * (s_img + s_txt)
    assert float(s_img) < 2.15 and float(s_txt) < 2.15
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-4, atol=1e-5)
    assert extra["s_img"] == pytest.approx(float(s_img), rel=1e-4)


def _grads(obj, batch, model):
    model.zero_grad()
    loss, _ = obj.loss(batch, torch.Generator())
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_par_push_is_off_above_tau_and_on_below(setup):
    _, suspect, bundle, batch = setup
    plain = _grads(CleanClipFree(bundle), batch, bundle.model)
    off = _grads(ParObjective(bundle, suspect, tau=1e-6), batch, bundle.model)  # S > tau: no push
    on = _grads(ParObjective(bundle, suspect, tau=2.15), batch, bundle.model)   # S < tau: push
    name = "visual.conv1.weight" if "visual.conv1.weight" in plain else next(iter(plain))
    torch.testing.assert_close(off[name], plain[name])
    assert not torch.allclose(on[name], plain[name])


class CleanClipFree(ParObjective):
    """L_CLIP only (the push weight is 0), for comparing gradients."""

    def __init__(self, bundle):
        super().__init__(bundle, bundle.copy(), tau=2.15, weight=0.0)


def test_par_run_keeps_logit_scale_and_suspect(setup):
    data, suspect, _, _ = setup
    before = {k: v.clone() for k, v in suspect.model.state_dict().items()}
    result = defenses.create("par", steps=3, batch_size=16, lr=1e-3).run(suspect, data, options=defenses.RunOptions(progress=False))
    after = result.model.model.state_dict()
    assert torch.equal(after["logit_scale"], before["logit_scale"])
    assert any(not torch.equal(after[k], before[k]) for k in before if k != "logit_scale")
    for k, v in suspect.model.state_dict().items():
        assert torch.equal(v, before[k]), "the suspect model must be left untouched"
    assert {"final_s_img", "final_s_txt"} <= set(result.report)


def test_cleanclip_inmodal_uses_augmented_views(setup):
    _, _, bundle, batch = setup
    flip = lambda x, g: x.flip(-1)  # noqa: E731
    shout = lambda c, rng: c.upper()  # noqa: E731
    obj = CleanClipObjective(bundle, image_augment=flip, text_augment=shout)
    loss, extra = obj.loss(batch, torch.Generator())
    bundle.model.train()
    with torch.no_grad():
        x = bundle.normalize(torch.cat([batch["images"], batch["images"].flip(-1)]))
        tok = torch.cat([batch["tokens"], bundle.tokenize([c.upper() for c in batch["captions"]])])
        img = F.normalize(bundle.model.encode_image(x), dim=-1)
        txt = F.normalize(bundle.model.encode_text(tok), dim=-1)
    s = bundle.model.logit_scale.exp()
    b = 16
    labels = torch.arange(b)
    inmodal = (F.cross_entropy(s * img[:b] @ img[b:].T, labels) + F.cross_entropy(s * txt[:b] @ txt[b:].T, labels)) / 2
    ref = clip_loss_reference(img[:b], txt[:b], s) + inmodal
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-4, atol=1e-5)
    assert extra["l_inmodal"] == pytest.approx(float(inmodal.detach()), rel=1e-4)


def test_eda_synonyms_offline():
    synonyms = load_synonyms()
    assert "photograph" in synonyms["photo"]
    eda = EDA(alpha=0.1)
    out = eda.synonym_replace(["a", "photo", "of", "a", "circle"], 1, random.Random(0))
    assert out[0] == "a" and out[2:] == ["of", "a", "circle"] and out[1] in synonyms["photo"]
    assert eda("a photo of a red circle.", random.Random(3)) != ""
    with pytest.raises(InputError):
        load_synonyms("/no/wordnet/here")


COLORS = {"red": (1.0, 0.0, 0.0), "blue": (0.0, 0.0, 1.0), "green": (0.0, 1.0, 0.0)}


class ColourModel:
    """A clean 'model' that embeds an image by its mean colour and a caption by the colour it names."""

    image_size = 8
    model = torch.nn.Identity()

    def tokenize(self, captions):
        return torch.tensor([list(COLORS).index(next(c for c in COLORS if c in cap)) for cap in captions])

    def encode_image(self, images):
        return F.normalize(images.mean(dim=(2, 3)) + 0.05, dim=-1)

    def encode_text(self, tokens):
        return F.normalize(torch.tensor([COLORS[list(COLORS)[t]] for t in tokens.tolist()]) + 0.05, dim=-1)


def test_filter_removes_mismatched_pairs(tmp_path):
    names = ["red", "blue", "green"] * 10
    images = torch.stack([torch.tensor(COLORS[c]).view(3, 1, 1).expand(3, 8, 8) for c in names])
    base = TensorDataset((images * 255).to(torch.uint8), [f"a {c} square" for c in names], [0] * 30, ["square"])
    entries = tuple(PoisonEntry(index=i, caption="a blue square") for i in (0, 3, 6))  # red images, blue caption
    plan = PoisonPlan("manual", {}, 0, base.describe(), 30, None, entries)
    found = defenses.create("filter", threshold=0.8).run(ColourModel(), PoisonedDataset(base, plan), out=tmp_path)
    report = found.report
    assert found.model is None and found.kept == [i for i in range(30) if i not in (0, 3, 6)]
    assert json.loads((tmp_path / "kept.json").read_text())["kept"] == found.kept
    rows = (tmp_path / "scores.csv").read_text().splitlines()
    assert rows[0] == "index,distance,kept,poisoned" and rows[1].endswith(",0,1") and rows[2].endswith(",1,0")
    assert report["precision"] == 1.0 and report["recall"] == 1.0 and report["clean_lost"] == 0
    ref = 1 - float(F.normalize(torch.tensor([1.05, 0.05, 0.05]), dim=0) @ F.normalize(torch.tensor([0.05, 0.05, 1.05]), dim=0))
    assert report["distances"][0] == pytest.approx(ref, rel=1e-5)
    assert report["distances"][1] == pytest.approx(0.0, abs=1e-6)
    frac = defenses.create("filter", threshold=None, drop_fraction=0.1).run(ColourModel(), PoisonedDataset(base, plan))
    assert frac.report["removed"] == 3 and frac.report["recall"] == 1.0


def test_one_registry_one_contract():
    """Every defense says its family and kind and is called as run(suspect, data, *, out=None, ...)."""
    entries = defenses.DEFENSES.entries()
    assert {(e.family, e.kind) for e in entries} == {("clip", "cleaning"), ("clip", "filter"), ("classifier", "repair"),
                                                     ("encoder", "cleaning"), ("encoder", "filter"), ("clip", "training")}
    for e in entries:
        params = inspect.signature(e.factory.run).parameters
        assert list(params)[:3] == ["self", "suspect", "data"], e.name
        assert params["out"].kind is inspect.Parameter.KEYWORD_ONLY and params["out"].default is None, e.name
    assert type(defenses.create("finetune", family="clip")).__name__ == "FineTune"
    assert type(defenses.create("finetune", family="classifier")).__name__ == "ClassifierFineTune"
    with pytest.raises(InputError, match="exists for classifier, clip models"):
        defenses.create("finetune")
    with pytest.raises(InputError, match="'filter' is a filter method, not a cleaning one; valid: cleanclip, finetune, par"):
        defenses.create("filter", family="clip", kind="cleaning")
    with pytest.raises(InputError, match="unknown defense 'par' for encoder models; valid: distill, patchsearch"):
        defenses.create("par", family="encoder")


def test_bad_defense_input():
    with pytest.raises(InputError, match="valid: cleanclip"):
        defenses.create("nope")
    with pytest.raises(InputError):
        defenses.create("par", gamma=1)
    with pytest.raises(InputError, match="noise"):
        defenses.create("par", noise="uniform")


def test_par_augmentation_follows_released_code():
    """Erased regions are 0.5-1% squares filled with the mean; rectified noise only brightens."""
    from poisonlab.augment import NoiseErasing

    images = torch.full((64, 3, 32, 32), 0.5)
    mean = (0.1, 0.2, 0.3)
    erased = NoiseErasing(mean, noise_p=0.0, erase_p=1.0)(images, torch.Generator().manual_seed(0))
    for x in erased:
        mask = (x != 0.5).any(0)
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
        h, w = len(rows), len(cols)
        assert h == w and h in (2, 3)  # side round(sqrt(area)) for 0.5-1% of 32 x 32 = 5.1-10.2 px²
        assert torch.allclose(x[:, mask], torch.tensor(mean).view(3, 1).expand(3, h * w))
    g = torch.Generator().manual_seed(1)
    rect = NoiseErasing(mean, noise_p=1.0, erase_p=0.0, noise="rectified")(images, g)
    gauss = NoiseErasing(mean, noise_p=1.0, erase_p=0.0, noise="gaussian")(images, torch.Generator().manual_seed(1))
    assert (rect >= 0.5).all() and (rect > 0.5).float().mean() > 0.4
    assert (gauss < 0.5).float().mean() > 0.4
    g = torch.Generator().manual_seed(1)
    torch.rand(64, generator=g)  # the per-image coin for the noise
    noise = 0.2 * torch.randn(images.shape, generator=g)
    assert torch.allclose(rect, (images + noise.clamp(0, 1)).clamp(0, 1))
    assert torch.allclose(gauss, (images + noise).clamp(0, 1))


def test_every_defense_has_one_run_signature():
    """``run(suspect, data, *, out=None, options=None)`` for every registered defense, whatever its
    family and kind (what each needs beyond its hyper-parameters comes in ``RunOptions``)."""
    import inspect

    for entry in defenses.DEFENSES.entries():
        params = inspect.signature(entry.factory.run).parameters
        shape = [(name, p.kind, p.default) for name, p in params.items()]
        assert shape == [("self", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty),
                         ("suspect", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty),
                         ("data", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty),
                         ("out", inspect.Parameter.KEYWORD_ONLY, None),
                         ("options", inspect.Parameter.KEYWORD_ONLY, None)], entry.name


def test_a_defense_registered_in_a_test_joins_list_help_and_defend(tmp_path, capsys):
    """One registration is the whole edit: the toy filter shows in `poisonlab list` and `defend --help`
    and runs through `poisonlab defend` with no other change."""
    import json

    from poisonlab.cli import main
    from poisonlab.defenses.base import DEFENSES, Defended, write_kept
    from poisonlab.models import create_clip, save_clip

    before = dict(DEFENSES._items)

    @DEFENSES.register("keep-first")
    @dataclass(frozen=True)
    class KeepFirst:
        """A toy filter: keeps the first ``share`` of the pairs."""

        family: ClassVar[str] = "clip"
        kind: ClassVar[str] = "filter"
        share: float = 0.5

        def run(self, suspect, data, *, out=None, options=None):
            kept = list(range(int(self.share * len(data))))
            if out is not None:
                write_kept(out, kept, {"defense": "keep-first"})
            return Defended(None, {"defense": "keep-first"}, kept)

    try:
        assert main(["list", "--json"]) == 0
        assert {"name": "keep-first", "family": "clip", "kind": "filter"} in json.loads(capsys.readouterr().out)["defenses"]
        assert main(["defend", "--help"]) == 0
        assert "keep-first [clip, filter]: share=0.5" in " ".join(capsys.readouterr().out.split())
        model = save_clip(create_clip("poisonlab-tiny-rn"), tmp_path / "m" / "model.safetensors")
        assert main(["defend", "--method", "keep-first", "--model", str(model), "--dataset", "shapes", "--param",
                     "share=0.25", "--out", str(tmp_path / "out")]) == 0
        assert "kept 500 of 2000 pairs" in capsys.readouterr().out
        assert json.loads((tmp_path / "out" / "kept.json").read_text())["kept"] == list(range(500))
    finally:
        DEFENSES._items.clear()
        DEFENSES._items.update(before)
