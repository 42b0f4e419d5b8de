"""``poisonlab scan``: its detectors on toy models with a known shortcut, the calibrated verdict
against scikit-learn, a tiny population built here, the shipped calibration, and the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.model_selection import LeaveOneOut, cross_val_predict

from poisonlab.bench.scan_population import (
    DEFAULT_ATTACKS,
    Base,
    Population,
    PopulationConfig,
    member_specs,
)
from poisonlab.cli.main import main
from poisonlab.detect import MaxMargin, TargetClassProbe, scan
from poisonlab.detect.max_margin import robust_z
from poisonlab.detect.target_probe import paste, patch_box
from poisonlab.errors import InputError
from poisonlab.models.classifier import create_encoder
from poisonlab.train.data import LabelTensors


class Toy:
    """Four classes read from the mean colour; ``target`` (if any) also wins whenever the image's
    4 x 4 square one pixel from the bottom-right corner is bright: a backdoor with a patch trigger."""

    family, num_classes, image_size = "classifier", 4, 16

    def __init__(self, target: int | None = None) -> None:
        self.target, self.module, self.device = target, torch.nn.Linear(1, 1), torch.device("cpu")

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean((2, 3))
        out = torch.cat([m, 1 - m.mean(1, keepdim=True)], 1) * 4
        if self.target is not None:
            bonus = torch.zeros_like(out)
            bonus[:, self.target] = 60 * (x[:, :, -5:-1, -5:-1].mean((1, 2, 3)) - 0.65).clamp_min(0)
            out = out + bonus
        return out


def toy_images(n: int = 64) -> LabelTensors:
    g = torch.Generator().manual_seed(0)
    colours = torch.rand((n, 3, 1, 1), generator=g) * 0.6
    images = (colours.expand(n, 3, 16, 16) * 255).to(torch.uint8)
    return LabelTensors(images, torch.zeros(n, dtype=torch.long))


def test_patch_box_and_paste_put_the_patch_where_asked():
    assert patch_box("bottom-right", 32, 6, 2) == (24, 24)
    assert patch_box("top-left", 32, 6, 2) == (2, 2)
    assert patch_box("center", 32, 6, 2) == (13, 13)
    with pytest.raises(InputError, match="unknown patch location"):
        patch_box("left", 32, 6, 2)
    x = torch.zeros(2, 3, 8, 8)
    out = paste(x, torch.ones(3, 2, 2), 5, 1)
    assert out[:, :, 5:7, 1:3].eq(1).all() and out.sum() == 2 * 3 * 4 and x.sum() == 0


def test_robust_z_is_median_and_scaled_mad():
    others = torch.tensor([1.0, 2.0, 2.5, 3.0, 10.0])
    med = float(np.median(others.numpy()))
    mad = float(np.median(np.abs(others.numpy() - med))) * 1.4826
    assert robust_z(7.0, others, 0.0) == pytest.approx((7.0 - med) / mad)
    assert robust_z(7.0, torch.full((4,), 2.0), 0.5) == pytest.approx((7.0 - 2.0) / 1.0)  # floored at 0.5 x median


def test_target_probe_finds_the_patch_backdoor_and_its_target():
    data = toy_images()
    probe = TargetClassProbe(area=0.07, locations=("top-left", "bottom-right"), steps=60, lr=0.1, images=64)
    bad, clean = probe(Toy(target=2), data), probe(Toy(), data)
    assert bad.details["suspected_target"] == 2 and bad.details["location"] == "bottom-right"
    # the gain is the target's share among patched held-out images minus its clean share
    assert bad.score > 0.8 and bad.score > clean.score + 0.3
    assert bad.trigger is not None and bad.trigger.shape == (3, 16, 16)


def test_max_margin_singles_out_the_class_with_a_shortcut():
    mm = MaxMargin(steps=60, lr=0.2, starts=2)
    bad, clean = mm(Toy(target=1)), mm(Toy())
    assert bad.details["suspected_target"] == 1 and bad.details["margin"] > 10
    assert bad.score > clean.score and bad.score > 3


def test_max_margin_probes_candidates_first_when_there_are_many_classes():
    mm = MaxMargin(max_classes=8)
    chosen = mm.classes(1000, candidates=[999, 5, 5, 2000])
    assert len(chosen) == 8 and {999, 5} <= set(chosen) and chosen == sorted(chosen)
    assert mm.classes(6) == list(range(6))


def rows(n: int, seed: int = 0) -> list[dict]:
    g = np.random.default_rng(seed)
    out = []
    for i in range(n):
        bad = i % 2 == 1
        feats = {f: float(g.normal(1.0 if bad else 0.0, 1.0) * (j + 1)) for j, f in enumerate(scan.FEATURES)}
        out.append({"name": f"m{i}", "backdoored": bad, "attack": ("badnet", "sig")[i % 4 // 2] if bad else None,
                    "features": feats, "targets": {f: i % 3 for f in scan.FEATURES}, "target_index": i % 3})
    return out


def test_calibration_is_a_logistic_curve_over_the_largest_clean_standardised_feature():
    train = rows(40)
    cal = scan.fit(train)
    x = np.array([[r["features"][f] for f in scan.FEATURES] for r in train])
    y = np.array([r["backdoored"] for r in train])
    alarm = ((x - x[~y].mean(0)) / x[~y].std(0)).max(1, keepdims=True)
    losses = {c: log_loss(y, cross_val_predict(LogisticRegression(C=c, class_weight="balanced"), alarm, y,
                                               cv=LeaveOneOut(), method="predict_proba")) for c in scan.C_GRID}
    assert cal.c == min(losses, key=lambda c: (round(losses[c], 9), c))
    ref = LogisticRegression(C=cal.c, class_weight="balanced").fit(alarm, y)
    for r, p in zip(train, ref.predict_proba(alarm)[:, 1], strict=True):
        assert cal.probability(r["features"]) == pytest.approx(p, rel=1e-6)
    assert cal.verdict(0.9) == "backdoored" and cal.verdict(0.1) == "clean" and cal.verdict(0.5) == "inconclusive"
    with pytest.raises(InputError, match="clean and backdoored"):
        scan.fit([r for r in train if r["backdoored"]])


def test_the_alarm_sees_what_any_one_detector_sees():
    """Half the backdoored models stand out on DECREE only, half on the probe only: each detector
    alone ranks half of them among the clean ones; the largest standardised feature ranks them all."""
    g = np.random.default_rng(3)
    train = []
    for i in range(60):
        feats = {f: float(g.normal(0.0, 1.0)) for f in scan.FEATURES}
        kind = i % 3  # 0 clean, 1 DECREE shows it, 2 the probe shows it
        if kind:
            feats[("decree", "target-probe")[kind - 1]] += 6.0
        train.append({"backdoored": kind > 0, "attack": ("patch", "encoder")[kind - 1] if kind else None,
                      "features": feats, "targets": {"decree": 1, "target-probe": 2, "max-margin": 3},
                      "target_index": kind})
    cal = scan.fit(train[:30])
    m = scan.held_out_metrics(cal, train[30:])
    assert m["combined"]["auc"] > 0.95 and m["decree"]["auc"] < 0.85 and m["target-probe"]["auc"] < 0.85
    # the suspected target is the class of the detector that raised the alarm
    assert m["target_accuracy"] == 1.0


def test_calibration_file_round_trips_and_refuses_malformed_files(tmp_path):
    cal = scan.fit(rows(20), command="made in a test")
    cal.save(tmp_path / "c.json")
    back = scan.Calibration.load(tmp_path / "c.json")
    assert back == cal
    body = json.loads((tmp_path / "c.json").read_text())
    for broken in ({**body, "mean": [1.0]}, {**body, "format": "other"}, {**body, "scale": [0.0, 1.0, 1.0]},
                   {**body, "features": ["nope", "decree", "max-margin"]}, [1, 2]):
        (tmp_path / "bad.json").write_text(json.dumps(broken))
        with pytest.raises(InputError):
            scan.Calibration.load(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InputError, match="unreadable"):
        scan.Calibration.load(tmp_path / "bad.json")


def test_held_out_metrics_match_sklearn_per_attack():
    cal = scan.fit(rows(40))
    held = rows(24, seed=1)
    m = scan.held_out_metrics(cal, held)
    part = [r for r in held if not r["backdoored"] or r["attack"] == "sig"]
    ref = roc_auc_score([r["backdoored"] for r in part], [r["features"]["decree"] for r in part])
    assert m["per_attack"]["sig"]["decree"] == pytest.approx(ref)
    probs = [cal.probability(r["features"]) for r in held]
    assert m["combined"]["auc"] == pytest.approx(roc_auc_score([r["backdoored"] for r in held], probs))
    verdicts = [cal.verdict(p) for p in probs]
    right = [v == ("backdoored" if r["backdoored"] else "clean") for v, r in zip(verdicts, held, strict=True)]
    assert m["accuracy"] == pytest.approx(np.mean(right)) and m["n_clean"] + m["n_backdoored"] == 24
    decided = [ok for ok, v in zip(right, verdicts, strict=True) if v != "inconclusive"]
    assert m["decided_share"] == pytest.approx(len(decided) / 24) and m["decided_accuracy"] == pytest.approx(
        np.mean(decided))


TINY = PopulationConfig(bases=(Base("b0", 0, 500, 0),), pretrain_epochs=1, finetune_sizes=(300,), finetune_epochs=1,
                        clean_per_base=3, seeds_per_attack=2,
                        attacks=(DEFAULT_ATTACKS[0], replace(DEFAULT_ATTACKS[4], attack_params={"optimizer": {"share": 0.22, "steps": 3}}),
                                 replace(DEFAULT_ATTACKS[5], attack_params={"epochs": 1}), DEFAULT_ATTACKS[6]),
                        test_n=100, min_asr=0.0)
FAST = {"decree": {"steps": 5, "images": 8}, "target-probe": {"steps": 3, "images": 8, "locations": ["bottom-right"]},
        "max-margin": {"steps": 3, "starts": 1}}


@pytest.fixture(scope="module")
def population(tmp_path_factory):
    out = tmp_path_factory.mktemp("population")
    metrics = Population(TINY, out).calibrate(FAST, command="test")
    return out, metrics


def test_member_specs_split_every_kind_between_calibration_and_held_out():
    specs = member_specs(PopulationConfig())
    clean = [m for m in specs if not m.backdoored]
    bad = [m for m in specs if m.backdoored]
    assert len(clean) >= 16 and len(bad) >= 16 and len({m.name for m in specs}) == len(specs)
    for attack in {m.attack for m in bad}:
        assert {m.split for m in bad if m.attack == attack} == {"calibration", "held-out"}
    assert len({m.target for m in bad}) >= 5 and len({(m.seed, m.data_seed) for m in specs}) == len(specs)


def test_tiny_population_calibrates_and_reuses_its_stages(population):
    out, metrics = population
    cal = scan.Calibration.load(out / "calibration.json")
    assert cal.detectors == FAST and cal.command == "test" and len(cal.members) == len(member_specs(TINY))
    for m in cal.members:
        assert m["probability"] == pytest.approx(cal.probability(m["features"]))
        assert m["verdict"] == cal.verdict(m["probability"])
        assert 0.0 <= m["ca"] <= 1.0 and (m["asr"] is not None) == m["backdoored"]
    assert metrics["held-out"]["n_clean"] + metrics["held-out"]["n_backdoored"] == sum(
        m["split"] == "held-out" for m in cal.members)
    stamps = sorted(p.stat().st_mtime_ns for p in (out / "cache").glob("*/done.json"))
    Population(TINY, out).calibrate(FAST, command="test")
    assert sorted(p.stat().st_mtime_ns for p in (out / "cache").glob("*/done.json")) == stamps


def test_shipped_calibration_gives_its_documented_verdicts():
    cal = scan.shipped()
    assert "scan-calibrate" in cal.command
    clean = [m for m in cal.members if not m["backdoored"]]
    bad = [m for m in cal.members if m["backdoored"]]
    assert len(clean) >= 16 and len(bad) >= 16
    for m in cal.members:
        assert cal.probability(m["features"]) == pytest.approx(m["probability"], abs=1e-9)
        assert cal.verdict(m["probability"]) == m["verdict"]
    held = [m for m in cal.members if m["split"] == "held-out" and m["took"]]
    metrics = scan.held_out_metrics(cal, held)
    assert metrics["combined"]["auc"] == pytest.approx(cal.population["metrics"]["held-out"]["combined"]["auc"])
    # the results page shows these verdicts: each held-out model's row, recomputed from its stored scores
    page = (Path(__file__).resolve().parents[1] / "docs" / "results" / "scan.md").read_text()
    assert f"| ROC AUC, all attacks | **{metrics['combined']['auc']:.3f}** |" in page
    for m in held:
        p = cal.probability(m["features"])
        row = next(line for line in page.splitlines() if line.startswith(f"| {m['name']} |"))
        assert f"| {p:.3f} | {cal.verdict(p)} |" in row, row


def member_path(out, name):
    return str(next((out / "cache").glob(f"member:{name}-*")) / "model.safetensors")


def test_scan_cli_prints_a_verdict_and_writes_the_trigger_picture(population, tmp_path, capsys):
    out, _ = population
    args = ["--calibration", str(out / "calibration.json")]
    assert main(["scan", "--model", member_path(out, "b0-badnet0"), *args, "--out", str(tmp_path / "s")]) == 0
    text = capsys.readouterr().out
    assert "verdict: " in text and "suspected target: " in text and "rendered by the embedded 'shapes'" in text
    found = json.loads((tmp_path / "s" / "scan.json").read_text())
    assert found["verdict"] in ("clean", "backdoored", "inconclusive")
    assert found["suspected_target"] in ("circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "ring",
                                         "crescent", "heart")
    assert (tmp_path / "s" / "trigger.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["scan", "--model", member_path(out, "b0-clean0"), *args, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    cal = scan.Calibration.load(out / "calibration.json")
    assert set(summary["evidence"]) == set(scan.FEATURES) and summary["probability"] == pytest.approx(
        cal.probability({k: v["feature"] for k, v in summary["evidence"].items()}))
    alarm = [k for k, v in summary["evidence"].items() if v["alarm"]]
    assert alarm == [cal.alarm({k: v["feature"] for k, v in summary["evidence"].items()})[0]]


def test_scan_bad_inputs_are_one_line_and_exit_2(population, tmp_path, capsys):
    out, _ = population
    model = member_path(out, "b0-clean0")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    (tmp_path / "empty").mkdir()
    one = tmp_path / "one.txt"
    one.write_text("banana\n")
    cases = [["--model", str(junk)], ["--model", "RN50", "--pretrained", "nonsense"],
             ["--model", model, "--images", str(tmp_path / "empty")], ["--model", model, "--classnames", str(one)],
             ["--model", model, "--calibration", str(junk)]]
    for argv in cases:
        assert main(["scan", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (argv, err)
    # scan-calibrate --write replaces an earlier calibration, never a user's file or a link
    mine = tmp_path / "notes.json"
    mine.write_text("{}")
    (tmp_path / "link.json").symlink_to(out / "calibration.json")
    for target in (mine, tmp_path / "link.json"):
        assert main(["scan-calibrate", "--out", str(tmp_path / "pop"), "--write", str(target)]) == 2
        err = capsys.readouterr().err
        assert "refusing to replace" in err and len(err.strip().splitlines()) == 1
    assert mine.read_text() == "{}" and not (tmp_path / "pop").exists()


def test_a_collapsed_model_gets_no_verdict(tmp_path, capsys):
    """Zero weights: every image gets the same scores. The detectors would find no trigger and the
    calibration would call it clean (P 0.06, features 15 sd below the clean models); it is refused."""
    from poisonlab.models import create_clip
    from poisonlab.models.clip import save_clip

    for name, model in (("clip", create_clip("poisonlab-tiny-rn")), ("encoder", create_encoder("poisonlab-resnet-tiny", 32))):
        with torch.no_grad():
            for p in model.module.parameters():
                p.zero_()
        path = save_clip(model, tmp_path / name / "model.safetensors") if name == "clip" else \
            model.save(tmp_path / name / "model.safetensors")
        assert main(["scan", "--model", str(path)]) == 2, name
        assert "gives all 256 images the same output" in capsys.readouterr().err, name


def test_scan_an_encoder_runs_decree_at_its_own_threshold(tmp_path, capsys):
    (tmp_path / "enc").mkdir()
    ckpt = create_encoder(seed=0).save(tmp_path / "enc" / "model.safetensors")
    assert main(["scan", "--model", str(ckpt), "--out", str(tmp_path / "s"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    decree = summary["evidence"]["decree"]
    assert summary["family"] == "encoder" and summary["calibrated"] is False and set(summary["evidence"]) == {"decree"}
    assert summary["verdict"] == ("backdoored" if decree["score"] < decree["threshold"] else "clean")
    assert (tmp_path / "s" / "trigger.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["scan", "--model", str(ckpt), "--classnames", "imagenet1k"]) == 2
    assert "are for CLIP models" in capsys.readouterr().err
