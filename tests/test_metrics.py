from __future__ import annotations

import torch
import torch.nn.functional as F

from poisonlab.metrics import attack_success_rate, best_target_rank, hit_and_min_rank, recall_at_k
from poisonlab.models.zero_shot import top_class


def test_asr_excludes_target_class():
    preds = torch.tensor([3, 3, 1, 3, 2, 3])
    labels = torch.tensor([0, 3, 1, 2, 3, 3])
    # brute force: non-target images are 0, 2, 3 -> predictions 3, 1, 3 -> 2 of 3 hit
    res = attack_success_rate(preds, labels, target=3)
    assert res["asr"] == 2 / 3
    assert res["asr_all"] == 4 / 6
    # RA: of those three, only image 2 (true class 1, predicted 1) keeps its class
    assert res["ra"] == 1 / 3


def test_der_matches_backdoorbench_by_hand():
    from poisonlab.metrics import defense_effectiveness

    # ASR 0.9 -> 0.1 (removed 0.8), CA 0.8 -> 0.7 (lost 0.1): (0.8 - 0.1 + 1) / 2
    assert abs(defense_effectiveness(0.8, 0.9, 0.7, 0.1) - 0.85) < 1e-12
    # a defense that raises ASR and CA is neither rewarded nor penalised for it: 0.5
    assert defense_effectiveness(0.8, 0.5, 0.9, 0.6) == 0.5
    # removes everything at no cost: 1; costs all accuracy, removes nothing: 0
    assert defense_effectiveness(0.8, 1.0, 0.8, 0.0) == 1.0
    assert defense_effectiveness(1.0, 0.9, 0.0, 0.9) == 0.0
    assert defense_effectiveness(0.8, float("nan"), 0.8, 0.1) != defense_effectiveness(0.8, float("nan"), 0.8, 0.1)


def test_report_rows_hold_ra_and_der(tmp_path):
    from poisonlab.bench.store import ResultsStore
    from poisonlab.report.experiment import ra_der_rows

    store = ResultsStore(tmp_path / "r.db")
    store.put("e", "badnet", "none", {"ca": 0.8, "asr": 0.9, "ra": 0.05})
    for seed, (ca, asr) in enumerate(((0.7, 0.1), (0.75, 0.3))):
        store.put("e", "badnet", "par", {"ca": ca, "asr": asr, "ra": 0.6}, seed)
    rows = ra_der_rows(store.table("e"), ["badnet"], ["par"])
    der = ((0.9 - 0.2) - (0.8 - 0.725) + 1) / 2  # from the seed means: ASR 0.2, CA 0.725
    assert rows[1] == ["badnet", "5.0", f"60.0 / {100 * der:.1f}"]


def _rank_loop(scores, mask):
    ranks = []
    for q in range(scores.shape[0]):
        order = sorted(range(scores.shape[1]), key=lambda g: -float(scores[q, g]))
        ranks.append(next(r for r, g in enumerate(order) if mask[q, g]))
    return ranks


def test_min_rank_is_zero_based_and_matches_loop():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(7, 20, generator=g)
    mask = torch.zeros(20, dtype=torch.bool)
    mask[[3, 11, 17]] = True
    ranks = _rank_loop(scores, mask.expand(7, 20))
    assert best_target_rank(scores, mask).tolist() == ranks
    res = hit_and_min_rank(scores, mask)
    assert res["min_rank"] == sum(ranks) / 7
    for k in (1, 5, 10):
        assert res[f"hit@{k}"] == sum(r < k for r in ranks) / 7
    top = torch.zeros(20)
    top[3] = 1.0
    assert hit_and_min_rank(top[None], mask)["min_rank"] == 0.0


def test_recall_at_k_against_loop():
    g = torch.Generator().manual_seed(1)
    img = F.normalize(torch.randn(12, 8, generator=g), dim=-1)
    txt = F.normalize(img + 0.8 * torch.randn(12, 8, generator=g), dim=-1)
    res = recall_at_k(img, txt)
    sims = img @ txt.T
    eye = torch.eye(12, dtype=torch.bool)
    i2t = _rank_loop(sims, eye)
    t2i = _rank_loop(sims.T, eye)
    for k in (1, 5, 10):
        assert res[f"i2t_r@{k}"] == sum(r < k for r in i2t) / 12
        assert res[f"t2i_r@{k}"] == sum(r < k for r in t2i) / 12


def test_ties_count_against_the_claim():
    """A model that scores everything the same ranks the target last and predicts no class."""
    flat = torch.zeros(3, 6)
    mask = torch.tensor([False, True, False, False, True, False])
    assert best_target_rank(flat, mask).tolist() == [4, 4, 4]  # the four non-targets tie with it
    assert hit_and_min_rank(flat, mask)["hit@1"] == 0.0
    scores = torch.tensor([[0.1, 0.9, 0.3], [0.5, 0.5, 0.2], [0.2, 0.2, 0.2]])
    assert top_class(scores).tolist() == [1, -1, -1]  # argmax would say 1, 0, 0
    preds = top_class(torch.zeros(4, 3))
    assert attack_success_rate(preds, torch.tensor([1, 2, 1, 2]), target=0)["asr"] == 0.0


def test_recall_at_k_counts_captions_of_the_same_words_and_not_ties():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    txt = torch.tensor([[0.9, 0.1], [1.0, 0.0], [0.0, 1.0]])  # image 0's best caption is caption 1
    words = ["a star", "a star", "a ring"]
    assert recall_at_k(img, txt, ks=(1,))["i2t_r@1"] == 1 / 3  # pairs only: just image 2 (image 1 ties 2 ways)
    assert recall_at_k(img, txt, ks=(1,), captions=words)["i2t_r@1"] == 2 / 3  # image 0: caption 1 is its words
    collapsed = recall_at_k(torch.ones(3, 2), torch.ones(3, 2), ks=(1,), captions=["x", "y", "z"])
    assert collapsed == {"i2t_r@1": 0.0, "t2i_r@1": 0.0}


def test_frontier_best_asr_within_and_pareto_front():
    from poisonlab.metrics import best_asr_within, pareto_front

    points = [(0.80, 0.60), (0.75, 0.30), (0.70, 0.35), (0.60, 0.05), (0.79, 0.70)]
    # reference: filter by the CA allowance by hand, then take the minimum ASR
    assert best_asr_within(points, suspect_ca=0.82, allowance=0.03) == 0.60
    assert best_asr_within(points, suspect_ca=0.82, allowance=0.10) == 0.30
    assert best_asr_within(points, suspect_ca=0.82, allowance=0.30) == 0.05
    assert best_asr_within(points, suspect_ca=0.95, allowance=0.03) is None
    assert pareto_front(points) == [(0.80, 0.60), (0.75, 0.30), (0.60, 0.05)]  # (0.70, 0.35), (0.79, 0.70) dominated


def test_classifier_table_says_which_repairs_the_accuracy_floor_stopped(tmp_path):
    from poisonlab.bench.store import ResultsStore
    from poisonlab.report.sections import classifier_sections

    store = ResultsStore(tmp_path / "r.db")
    store.put("e", "badnet", "none", {"ca": 0.8, "asr": 0.9, "arr": 0.05})
    store.put("e", "badnet", "finetune", {"ca": 0.8, "asr": 0.9, "arr": 0.05, "stopped_at": 50})
    store.put("e", "badnet", "pivotal-tuning", {"ca": 0.7, "asr": 0.2, "arr": 0.6})
    (title, rows, note), *_ = classifier_sections(store, "e", ["badnet"], ["finetune", "pivotal-tuning"], 0.01)
    assert note.endswith("badnet finetune at step 50.") and "pivotal-tuning at" not in note
    assert rows[1][2] == rows[1][3] == "80.0 / 90.0 / 5.0"
