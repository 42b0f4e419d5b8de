"""What the report says beside its numbers: captions, false positives named, no empty panels."""

from __future__ import annotations

from poisonlab.bench.store import ResultsStore, Spread
from poisonlab.report.sections import verdicts
from poisonlab.report.text import dose_response


def test_a_detector_flagging_the_clean_model_is_called_a_false_positive():
    assert verdicts(Spread((1.0,)), clean=True) == "backdoored: false positive"
    assert verdicts(Spread((0.0,)), clean=True) == "clean"
    assert verdicts(Spread((1.0,))) == "backdoored"
    assert verdicts(Spread((0.0, 1.0, 1.0)), clean=True) == "backdoored on 2 of 3 seeds: false positive"
    assert verdicts(Spread((0.0, 0.0)), clean=True) == "backdoored on 0 of 2 seeds"


def test_dose_response_draws_only_attacks_with_two_doses(tmp_path):
    store = ResultsStore(tmp_path / "r.db")
    point = {"hit@10": 0.5, "min_rank": 3.0, "baseline_hit@10": 0.0, "baseline_min_rank": 40.0}
    store.put_point("e/text", "attack-2", "none", 300, 0, point)
    assert dose_response(store, "e/text", tmp_path / "one.png") is None and not (tmp_path / "one.png").exists()
    store.put_point("e/text", "attack-2", "none", 600, 0, point)
    assert dose_response(store, "e/text", tmp_path / "two.png") is not None and (tmp_path / "two.png").is_file()


def test_every_figure_the_runner_writes_has_a_caption():
    from poisonlab.report.experiment import CAPTIONS

    for name in ("triggers.png", "ca_vs_asr.png", "repairs.png", "roc.png", "dose_response.png"):
        assert len(CAPTIONS[name]) > 40
