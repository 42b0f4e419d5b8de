"""k-distance, SLOF and DAO (Huang et al., ICLR 2025) against hand-written references, the
neighbour search, the detection metrics, the filter's outputs and the ``audit`` command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score

from poisonlab import attacks, defenses
from poisonlab.attacks.plan import PoisonedDataset
from poisonlab.cli.main import main
from poisonlab.data import open_dataset
from poisonlab.data.base import TensorDataset
from poisonlab.defenses import RunOptions
from poisonlab.errors import InputError
from poisonlab.metrics.detection import detection_metrics, quantile_threshold
from poisonlab.metrics.local_outliers import SCORES, Reference, score_items
from poisonlab.metrics.neighbours import nearest
from poisonlab.metrics.pair_embeddings import embed_pairs, load_embeddings
from poisonlab.models import create_clip, save_clip


def planted(n: int = 120, poisons: int = 6, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clean images spread out, captions near their images; the first ``poisons`` images in a tight
    far cluster (what a backdoored model does to triggered images)."""
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(n, dim)).astype(np.float32)
    txt = (img + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)
    img[:poisons] = 5 + 0.05 * rng.normal(size=(poisons, dim))
    return img, txt


def reference_points(img, txt, embeddings):
    chosen = {"image": [img], "text": [txt], "both": [img, txt]}[embeddings]
    return np.concatenate(chosen), np.concatenate([np.arange(len(img))] * len(chosen))


def hand_scores(img, txt, k, embeddings):
    """The paper's definitions, one item at a time: own pair left out everywhere."""
    pts, groups = reference_points(img, txt, embeddings)

    def sorted_row(x, group):
        d = [(float(np.linalg.norm(x - p)), j) for j, p in enumerate(pts) if groups[j] != group]
        return sorted(d)

    kd = [sorted_row(p, groups[j])[k - 1][0] for j, p in enumerate(pts)]
    lid = []
    for j, p in enumerate(pts):
        row = [d for d, _ in sorted_row(p, groups[j])[:k]]
        lid.append(-k / sum(math.log(d / row[-1] + 1e-4) for d in row))
    out = {"kdist": [], "slof": [], "dao": []}
    for i, x in enumerate(img):
        row = sorted_row(x, i)[:k]
        dk = row[-1][0]
        out["kdist"].append(dk)
        out["slof"].append(np.mean([dk / kd[j] for _, j in row]))
        out["dao"].append(np.mean([lid[j] * math.log(dk / kd[j]) for _, j in row]))
    return {name: np.array(v) for name, v in out.items()}


def hand_authors(img, txt, k, name, embeddings):
    """The released code's arithmetic for one batch, written out: the row drops the own image and
    own caption, its sorted positions are read as rows of the full reference (self included)."""
    b = len(img)
    full = np.concatenate([img, txt]) if embeddings == "both" else img
    # the self distances as torch.cdist's matrix-product path leaves them (not exactly 0), as in the
    # released code: they enter each LID through log(d_0 / d_k + 1e-4)
    full_t = torch.from_numpy(full)
    full_sorted = np.sort(torch.cdist(full_t, full_t).numpy(), axis=1)
    full_lid = -k / np.log(full_sorted[:, :k] / full_sorted[:, k:k + 1] + 1e-4).sum(1)
    out = []
    for i in range(b):
        row = [np.linalg.norm(img[i] - img[j]) for j in range(b) if j != i]
        if embeddings == "both":
            row += [np.linalg.norm(img[i] - txt[j]) for j in range(b) if j != i]
        order = np.argsort(row, kind="stable")
        a = np.array(row)[order]
        nb = order[:k]
        score = {"kdist": a[k], "slof": np.mean(a[k] / full_sorted[nb, k]),
                 "dao": np.mean(full_lid[nb] * np.log(a[k] / full_sorted[nb, k]))}[name]
        out.append(score)
    return np.array(out)


@pytest.mark.parametrize("embeddings", ["both", "image", "text"])
@pytest.mark.parametrize("name", ["kdist", "slof", "dao"])
def test_scores_match_the_definitions(name, embeddings):
    img, txt = planted(n=30, poisons=3)
    for reference in ("all", "batch"):  # one batch holds the whole set here
        ours, _ = score_items(SCORES[name](), Reference(k=4, embeddings=embeddings, reference=reference), img, txt)
        np.testing.assert_allclose(ours, hand_scores(img, txt, 4, embeddings)[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("embeddings", ["both", "image"])
@pytest.mark.parametrize("name", ["kdist", "slof", "dao"])
def test_authors_mode_reproduces_the_released_arithmetic(name, embeddings):
    img, txt = planted(n=25, poisons=3, seed=1)
    ref = Reference(k=5, embeddings=embeddings, reference="batch", batch_size=25, mode="authors")
    ours, _ = score_items(SCORES[name](), ref, img, txt)
    np.testing.assert_allclose(ours, hand_authors(img, txt, 5, name, embeddings), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["kdist", "slof", "dao"])
def test_planted_cluster_ranks_first_and_authors_mode_differs(name):
    img, txt = planted()
    labels = np.arange(len(img)) < 6
    for ref in (Reference(k=8, reference="all"), Reference(k=8, reference="batch", batch_size=60, mode="authors")):
        scores, _ = score_items(SCORES[name](), ref, img, txt)
        assert roc_auc_score(labels, scores) == 1.0
    corrected, _ = score_items(SCORES[name](), Reference(k=8, reference="batch", batch_size=60), img, txt)
    authors, _ = score_items(SCORES[name](), Reference(k=8, reference="batch", batch_size=60, mode="authors"), img, txt)
    assert not np.allclose(corrected, authors)


def test_batches_score_each_item_against_its_own_batch():
    img, txt = planted(n=50)
    ref = Reference(k=3, reference="batch", batch_size=20, seed=5)
    batches = ref.batches(50)
    assert sorted(np.concatenate(batches).tolist()) == list(range(50)) and {len(b) for b in batches} <= {16, 17}
    extra = np.random.default_rng(2).normal(size=(7, 8)).astype(np.float32)
    scores, outside = score_items(SCORES["slof"](), ref, img, txt, extra)
    for b, items in enumerate(batches):
        alone, alone_extra = score_items(SCORES["slof"](), Reference(k=3, reference="all"), img[items], txt[items],
                                         extra[b::len(batches)])
        np.testing.assert_allclose(scores[items], alone)
        np.testing.assert_allclose(outside[b::len(batches)], alone_extra)
    whole, _ = score_items(SCORES["slof"](), Reference(k=3, reference="batch", batch_size=64), img, txt)
    np.testing.assert_allclose(whole, score_items(SCORES["slof"](), Reference(k=3, reference="all"), img, txt)[0])


def test_outside_queries_exclude_nothing():
    img, txt = planted(n=20)
    # an outside query equal to item 0's image: its nearest point is that image itself at distance 0
    _, outside = score_items(SCORES["kdist"](), Reference(k=1, embeddings="image"), img, txt, img[:1].copy())
    assert outside[0] == 0.0


def test_exact_search_matches_brute_force_and_faiss_never_finds_closer():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=10, size=(10, 16))
    pts = (centres[rng.integers(0, 10, 3000)] + rng.normal(size=(3000, 16))).astype(np.float16)
    groups = np.arange(3000) // 2
    exact = nearest(pts, pts, 5, groups, groups, chunk=700)
    d = torch.cdist(torch.from_numpy(pts.astype(np.float32)), torch.from_numpy(pts.astype(np.float32)))
    d[torch.from_numpy(groups)[:, None] == torch.from_numpy(groups)[None]] = math.inf
    np.testing.assert_allclose(exact.distances, torch.topk(d, 5, largest=False).values.numpy(), rtol=1e-5, atol=1e-4)
    approx = nearest(pts, pts, 5, groups, groups, search="faiss", nprobe=8)
    assert (approx.distances >= exact.distances - 1e-3).all()
    assert np.mean([len(set(a) & set(e)) / 5 for a, e in zip(approx.indices, exact.indices, strict=True)]) > 0.9
    assert not (groups[approx.indices] == groups[:, None]).any()


def test_bad_neighbour_inputs():
    img, txt = planted(n=10)
    with pytest.raises(InputError, match="k = 20 is larger"):
        score_items(SCORES["slof"](), Reference(k=20), img, txt)
    with pytest.raises(InputError, match="k = 4 is larger"):  # batches of 3 leave 2 images and 2 captions
        score_items(SCORES["slof"](), Reference(k=4, batch_size=3), img, txt)
    broken = img.copy()
    broken[3, 0] = np.nan
    with pytest.raises(InputError, match="not finite"):
        score_items(SCORES["dao"](), Reference(k=2), broken, txt)
    with pytest.raises(InputError, match="needs reference=batch"):
        Reference(mode="authors", reference="all")
    with pytest.raises(InputError, match="embeddings must be"):
        Reference(embeddings="audio")


def test_detection_metrics_by_hand():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    poisoned = {0, 2, 5}
    m = detection_metrics(scores, poisoned, threshold=0.55)
    # flagged: 0, 1, 2, 3 -> two of them poisoned, of three poisons
    assert (m["flagged"], m["caught"], m["clean_lost"]) == (4, 2, 2)
    assert m["precision"] == 0.5 and m["recall"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(4 / 7)
    wins = sum((scores[p] > scores[c]) for p in poisoned for c in set(range(8)) - poisoned)
    assert m["auroc"] == pytest.approx(wins / 15)
    # average precision: mean of the precision at each poison's rank (1/1, 2/3, 3/6)
    assert m["auprc"] == pytest.approx((1 + 2 / 3 + 3 / 6) / 3)
    clean = np.arange(100.0)
    assert quantile_threshold(clean, 0.05) == 95.0 and (clean > quantile_threshold(clean, 0.05)).sum() == 4
    with pytest.raises(InputError):
        quantile_threshold(clean, 0.0)


def poisoned_set(n: int = 40, count: int = 4) -> PoisonedDataset:
    base = open_dataset("shapes", n=n, seed=0)
    return PoisonedDataset(base, attacks.create("clip-dirty", trigger="badnet", target="star", count=count)(base, seed=0))


def test_filter_writes_scores_flags_and_reuses_embeddings(tmp_path):
    bundle = create_clip("poisonlab-tiny-rn", seed=1)
    data = poisoned_set()
    reference = open_dataset("shapes", n=30, seed=2)
    flt = defenses.create("slof", k=4, fpr=0.1)
    result = flt.run(bundle, data, out=tmp_path, options=RunOptions(progress=False, reference=reference))
    rep = result.report
    assert rep["threshold_from"].startswith("clean reference (30 pairs)")
    scores = np.array(rep["scores"])
    assert result.kept == np.flatnonzero(scores <= rep["threshold"]).tolist()
    assert rep["poisoned"] == 4 and 0 <= rep["auroc"] <= 1 and rep["removed"] == len(data) - len(result.kept)
    rows = (tmp_path / "scores.csv").read_text().splitlines()
    assert rows[0] == "index,key,score,flagged,poisoned" and len(rows) == 41 and rows[1].split(",")[1] == "#0"
    assert sum(int(r.split(",")[4]) for r in rows[1:]) == 4
    flagged = json.loads((tmp_path / "flagged.json").read_text())["flagged"]
    assert [f["index"] for f in flagged] == sorted(set(range(40)) - set(result.kept))
    emb = load_embeddings(tmp_path / "embeddings", data)
    assert emb.images.dtype == np.float16 and emb.images.shape == (40, bundle.model.visual.output_dim)
    with torch.no_grad():
        raw = bundle.encode_image(torch.stack([data[i][0] for i in range(3)]), normalize=False)
    np.testing.assert_allclose(emb.images[:3].astype(np.float32), raw.numpy(), rtol=2e-3, atol=2e-3)
    # test-time use: inputs scored against the set, from their raw embeddings
    got = flt.score_inputs(bundle, emb, torch.stack([data[i][0] for i in range(3)]))
    _, want = score_items(SCORES["slof"](), flt, emb.images, emb.texts, raw.numpy())
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # the same data and model: embeddings reused, the same scores
    stamp = (tmp_path / "embeddings" / "images.npy").stat().st_mtime_ns
    again = flt.run(bundle, data, out=tmp_path, options=RunOptions(progress=False, reference=reference))
    assert again.report["scores"] == rep["scores"]
    assert (tmp_path / "embeddings" / "images.npy").stat().st_mtime_ns == stamp
    with pytest.raises(InputError, match="another dataset"):
        load_embeddings(tmp_path / "embeddings", open_dataset("shapes", n=40, seed=1))
    # without a clean reference the set's own quantile: fpr 0.1 of 40 flags 4 at most
    own = defenses.create("kdist", k=4, fpr=0.1).run(bundle, data, options=RunOptions(progress=False))
    assert own.report["threshold_from"].startswith("the set itself") and own.report["removed"] <= 4
    top = defenses.create("dao", k=4, drop_fraction=0.25).run(bundle, data, options=RunOptions(progress=False))
    assert top.report["removed"] == 10


def test_embedding_pass_refuses_empty_data(tmp_path):
    bundle = create_clip("poisonlab-tiny-rn", seed=1)
    empty = TensorDataset(torch.zeros(0, 3, 32, 32, dtype=torch.uint8), [], [])
    with pytest.raises(InputError, match="empty"):
        embed_pairs(bundle, empty, tmp_path, progress=False)


def test_cli_audit_with_a_detector(tmp_path, capsys):
    ckpt = str(save_clip(create_clip("poisonlab-tiny-rn", seed=1), tmp_path / "m.safetensors"))
    main(["poison", "--dataset", "shapes", "--n", "40", "--attack", "clip-dirty", "--target", "star", "--count", "4",
          "--trigger", "badnet", "--out", str(tmp_path / "plan")])
    capsys.readouterr()
    plan = str(tmp_path / "plan" / "plan.json")
    code = main(["audit", "--method", "slof", "--model", ckpt, "--dataset", plan, "--param", "k=4",
                 "--clean-reference", "shapes", "--clean-n", "30", "--out", str(tmp_path / "a"), "--json"])
    res = json.loads(capsys.readouterr().out)
    assert code == 0 and res["poisoned"] == 4 and "auroc" in res and res["kept"] + res["removed"] == 40
    assert {"scores.csv", "kept.json", "flagged.json", "embeddings"} <= {p.name for p in (tmp_path / "a").iterdir()}
    # scoring again from the stored embeddings: the same scores without an embedding pass
    code = main(["audit", "--method", "slof", "--model", ckpt, "--dataset", plan, "--param", "k=4", "--clean-reference",
                 "shapes", "--clean-n", "30", "--embeddings", str(tmp_path / "a" / "embeddings"),
                 "--out", str(tmp_path / "c"), "--json"])
    again = json.loads(capsys.readouterr().out)
    assert code == 0 and again["threshold"] == res["threshold"] and not (tmp_path / "c" / "embeddings").exists()
    assert (tmp_path / "c" / "scores.csv").read_text() == (tmp_path / "a" / "scores.csv").read_text()
    for argv, needle in [
        (["--method", "slof", "--param", "k=100"], "k = 100 is larger"),
        (["--method", "slof", "--param", "embeddings=audio"], "embeddings must be one of"),
        (["--method", "filter", "--clean-reference", "shapes"], "does not use them"),
        (["--method", "dao", "--embeddings", str(tmp_path / "a" / "embeddings"), "--param", "k=4"],
         "made from another dataset"),
        (["--method", "kdist", "--param", "fpr=2"], "fpr must be in (0, 1)"),
    ]:
        dataset = "shapes" if "--embeddings" in argv else plan
        code = main(["audit", *argv, "--model", ckpt, "--dataset", dataset, "--out", str(tmp_path / "b")])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_runner_detects_retrains_and_reports(tmp_path):
    from test_bench import TINY

    from poisonlab import demo
    from poisonlab.bench.store import ResultsStore

    spec = dict(TINY, defenses=[], detectors=[
        {"name": "slof", "detector": "slof", "params": {"k": 4}, "clean_n": 30, "retrain": True},
        {"name": "kdist", "detector": "kdist", "params": {"k": 4, "embeddings": "image"}, "clean_n": 30},
        {"name": "cosine", "detector": "filter", "params": {"threshold": None, "drop_fraction": 0.2}, "retrain": True}])
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(spec))
    html = demo.run(str(tmp_path / "tiny.yaml"), tmp_path / "out", progress=False)
    store = ResultsStore(tmp_path / "out" / "results.db")
    table = store.table("tiny")
    detected = table[("stripes", "slof (detect)")]
    doc = store.document("tiny", "scores:stripes:slof")
    labels = np.isin(np.arange(64), doc["poisoned"])
    assert 0 <= detected["test_auroc"] <= 1
    assert len(doc["poisoned"]) == 6 and detected["auroc"] == pytest.approx(roc_auc_score(labels, doc["scores"]))
    flagged = np.asarray(doc["scores"]) > doc["threshold"]
    assert detected["flagged"] == flagged.sum() and detected["caught"] == (flagged & labels).sum()
    assert 0 <= table[("stripes", "slof + retrain")]["asr"] <= 1 and ("stripes", "kdist + retrain") not in table
    # the cosine filter scores with the clean pre-trained model and drops its 20% share
    cosine = table[("stripes", "cosine (detect)")]
    assert cosine["flagged"] == 13 and "test_auroc" not in cosine and ("stripes", "cosine + retrain") in table
    assert cosine["caught"] == table[("stripes", "filter (audit)")]["caught"]  # the audit's model and share
    cosine_doc = store.document("tiny", "scores:stripes:cosine")
    assert cosine["auroc"] == pytest.approx(roc_auc_score(labels, cosine_doc["scores"]))
    assert (np.asarray(cosine_doc["scores"]) > cosine_doc["threshold"]).sum() == cosine["flagged"]
    readme = (html.parent / "README.md").read_text()
    assert "## Poisoned-pair detectors" in readme and "| stripes | slof + retrain" not in readme
    assert "slof + retrain" in readme
    for name in ("detectors_curves.png", "detectors_scores.png"):
        assert (html.parent / name).stat().st_size > 0


def test_row_stack_reads_rows_of_several_arrays_without_copying_them(tmp_path):
    from poisonlab.metrics.neighbours import RowStack

    a = np.lib.format.open_memmap(tmp_path / "a.npy", mode="w+", dtype=np.float16, shape=(5, 3))
    a[:] = np.arange(15).reshape(5, 3)
    b = np.arange(100, 106, dtype=np.float32).reshape(2, 3)
    both = np.concatenate([np.asarray(a, np.float32), b])
    stack = RowStack(a, b, np.zeros((0, 3), np.float32))
    assert stack.shape == (7, 3) and len(stack) == 7
    np.testing.assert_array_equal(stack[2:6], both[2:6])
    np.testing.assert_array_equal(stack[np.array([6, 0, 4, 5])], both[[6, 0, 4, 5]])
    with pytest.raises(InputError, match="different widths"):
        RowStack(a, np.zeros((1, 4), np.float32))


def test_a_cluster_larger_than_k_hides_from_the_whole_set_but_not_from_batches():
    img, txt = planted(n=3000, poisons=30, seed=3)
    labels = np.arange(3000) < 30
    whole, _ = score_items(SCORES["dao"](), Reference(k=8, reference="all"), img, txt)
    batched, _ = score_items(SCORES["dao"](), Reference(k=8, reference="batch", batch_size=300), img, txt)
    assert roc_auc_score(labels, whole) < 0.5 < 0.99 < roc_auc_score(labels, batched)


def test_the_grid_scores_an_attack_on_captions(tmp_path):
    """Text Attack II in the grid: detectors score its poisoned pairs, the rows hold Hit@K / MinRank
    (equal to the text study's own measure of the same model), and no trigger is drawn or asked for."""
    from test_bench import TINY

    from poisonlab import demo
    from poisonlab.attacks import create
    from poisonlab.bench.cache import MODEL
    from poisonlab.bench.store import ResultsStore
    from poisonlab.bench.text_section import goal_metrics
    from poisonlab.metrics import ClipEvaluator
    from poisonlab.models import load_clip

    attack = {"name": "t2", "attack": "text-attack-2", "rate": 0.1,
              "attack_params": {"source": "circle", "target": "star"}}
    spec = dict(TINY, attacks=[attack], defenses=TINY["defenses"][:1], detectors=[
        {"name": "kdist", "detector": "kdist", "params": {"k": 4}, "clean_n": 30}])
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(spec))
    html = demo.run(str(tmp_path / "tiny.yaml"), tmp_path / "out", progress=False)
    table = ResultsStore(tmp_path / "out" / "results.db").table("tiny")
    poisoned = table[("t2", "none")]
    assert "asr" not in poisoned and 0 <= poisoned["hit@10"] <= 1 and "min_rank" in poisoned
    detected = table[("t2", "kdist (detect)")]
    assert detected["auroc"] >= 0 and "test_auroc" not in detected, "no trigger: no test-time scoring"
    (model,) = (tmp_path / "out" / "cache").glob("poison:t2-*/" + MODEL)
    base = open_dataset("shapes", n=64, seed=1, size=32)
    ev = ClipEvaluator(load_clip(model), open_dataset("shapes", split="test", n=40, seed=0, size=32))
    again = goal_metrics(ev, create("text-attack-2", source="circle", target="star", rate=0.1), base, 0)
    assert poisoned["hit@10"] == pytest.approx(again["hit@10"]) and poisoned["min_rank"] == again["min_rank"]
    readme = (html.parent / "README.md").read_text()
    assert "triggers.png" not in readme and "ca_vs_asr.png" not in readme and "Robust accuracy" not in readme
    bad = dict(spec, attacks=[dict(attack, trigger="badnet")])
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(InputError, match="poisons captions; give it no trigger"):
        demo.run(str(tmp_path / "bad.yaml"), tmp_path / "out2", progress=False)
