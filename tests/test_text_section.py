"""The text-modality section of the runner at a miniature budget: stages, points, report, figure."""

from __future__ import annotations

import json

import torch
import yaml

from poisonlab import demo
from poisonlab.bench.store import ResultsStore
from poisonlab.data import open_dataset
from poisonlab.models import load_clip
from tests.test_bench import TINY

TEXT = {
    "n": 200, "data_seed": 1, "epochs": 1, "lr": 1e-3, "batch_size": 32,
    "attacks": [
        {"name": "attack-2", "attack": "text-attack-2", "params": {"source": "circle", "target": "star"}},
        {"name": "attack-1", "attack": "text-attack-1", "params": {"source": "circle"}, "counts": [0, 8]},
    ],
    "counts": [0, 8, 16],
    "seeds": [1],
    "seed_counts": [8],
    "defend_count": 8,
    "filter_fraction": 0.1,
    "defenses": [{"name": "finetune", "defense": "finetune", "params": {"steps": 2, "batch_size": 32}}],
}


def brute_force_hit10(model_path, test, source: str, target: str) -> tuple[float, float]:
    """Hit@10 and MinRank of ``source`` captions toward ``target`` images, ranked one query at a time."""
    bundle = load_clip(model_path)
    bundle.model.eval()
    with torch.no_grad():
        images = bundle.encode_image(torch.stack([test[i][0] for i in range(len(test))]))
        texts = bundle.encode_text(bundle.tokenize(test.captions()))
    labels = test.labels()
    src, tgt = test.classnames.index(source), test.classnames.index(target)
    ranks = []
    for q in (i for i, y in enumerate(labels) if y == src):
        scores = (texts[q] @ images.T).tolist()
        best = max(s for s, y in zip(scores, labels, strict=True) if y == tgt)
        ranks.append(sum(s > best for s in scores))
    return sum(r < 10 for r in ranks) / len(ranks), sum(ranks) / len(ranks)


def test_text_section_measures_every_dose_seed_and_defense(tmp_path):
    spec = dict(TINY, text=TEXT)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    html = demo.run(str(tmp_path / "s.yaml"), tmp_path / "out", progress=False)
    store = ResultsStore(tmp_path / "out" / "results.db")
    points = {(p.attack, p.condition, p.dose, p.seed): p.metrics for p in store.points("tiny/text")}
    expected = {("attack-2", "none", d, 0) for d in (0, 8, 16)} | {("attack-2", "none", 8, 1)}
    expected |= {("attack-1", "none", 0, 0), ("attack-1", "none", 8, 0), ("attack-1", "none", 8, 1)}
    expected |= {(a, "clean model", 0, 0) for a in ("attack-2", "attack-1")}
    expected |= {(a, c, 8, 0) for a in ("attack-2", "attack-1") for c in ("filter", "finetune")}
    assert set(points) == expected

    stages = {s for s, _, _ in store.stages("tiny")}
    assert "text:clean:seed0" in stages and "text:attack-2:8:seed1" in stages
    assert not any(s.startswith("text:attack-1:0") for s in stages), "dose 0 is one clean fine-tune for every attack"
    cache = tmp_path / "out" / "cache"
    (poisoned,) = cache.glob("text:attack-2:16:seed0-*")
    plan = json.loads((poisoned / "plan.json").read_text())
    assert len(plan["entries"]) == 16
    test = open_dataset("shapes", split="test", size=32, n=40, seed=0)
    for dose in (0, 16):
        (folder,) = cache.glob(f"text:{'clean' if dose == 0 else 'attack-2:16'}:seed0-*")
        hit10, min_rank = brute_force_hit10(folder / "model.safetensors", test, "circle", "star")
        assert points[("attack-2", "none", dose, 0)]["hit@10"] == hit10
        assert abs(points[("attack-2", "none", dose, 0)]["min_rank"] - min_rank) < 1e-6

    filt = points[("attack-2", "filter", 8, 0)]
    assert filt["removed"] == 20 and filt["poisoned"] == 8
    assert filt["precision"] == filt["caught"] / 20 and filt["recall"] == filt["caught"] / 8
    (filtered,) = cache.glob("text:attack-2:8:seed0:filter-*")
    assert json.loads((filtered / "model.json").read_text())["poisonlab"]["provenance"]["dataset"]["size"] == 180

    readme = (html.parent / "README.md").read_text()
    assert "Text-modality poisoning: dose-response" in readme and "Text-modality defenses" in readme
    row = points[("attack-2", "none", 8, 0)], points[("attack-2", "none", 8, 1)]
    mean = (row[0]["hit@10"] + row[1]["hit@10"]) / 2
    assert "| attack-2 | 8 (4) | 2 | " in readme and f"{mean:.2f} ± " in readme
    assert (html.parent / "dose_response.png").stat().st_size > 0
