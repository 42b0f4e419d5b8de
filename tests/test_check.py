"""Expected ranges: ``poisonlab report --check`` says which numbers of a run are off."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from poisonlab.bench.store import ResultsStore
from poisonlab.cli.main import main
from poisonlab.errors import InputError
from poisonlab.report.check import check, expected_file, load_expected


def _run(tmp_path, asr: float):
    run = tmp_path / "run"
    store = ResultsStore(run / "results.db")
    store.put("demo", "badnet", "none", {"ca": 0.84, "asr": asr})
    for seed, hit in ((0, 0.6), (1, 1.0)):
        store.put_point("demo/text", "attack-2", "none", 300, seed, {"hit@10": hit})
    store.close()
    return run


def _expected(tmp_path, asr_range):
    path = tmp_path / "demo.expected.yaml"
    path.write_text(yaml.safe_dump({"preset": "demo", "numbers": [
        {"experiment": "demo", "attack": "badnet", "row": "none", "metric": "ca", "range": [0.8, 0.9]},
        {"experiment": "demo", "attack": "badnet", "row": "none", "metric": "asr", "range": asr_range},
        {"experiment": "demo/text", "attack": "attack-2", "row": "none", "dose": 300, "metric": "hit@10",
         "range": [0.7, 0.9]},
    ]}))
    return path


def test_an_out_of_range_number_exits_1_and_is_named(tmp_path, capsys):
    run, exp = _run(tmp_path, asr=0.42), _expected(tmp_path, [0.9, 1.0])
    assert main(["report", "--check", str(run), "--expected", str(exp)]) == 1
    out = capsys.readouterr().out
    assert "OFF  demo: badnet / none / asr: 0.42, expected [0.9, 1]" in out
    assert "2 of 3 numbers inside their expected ranges; 1 off" in out


def test_inside_every_range_exits_0(tmp_path, capsys):
    run, exp = _run(tmp_path, asr=0.95), _expected(tmp_path, [0.9, 1.0])
    assert main(["report", "--check", str(run), "--expected", str(exp), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)["check"]
    assert summary["inside"] == summary["total"] == 3 and summary["off"] == []


def test_seed_mean_and_missing_numbers(tmp_path):
    run = _run(tmp_path, asr=0.95)
    store = ResultsStore(run / "results.db")
    found = check(store, load_expected(_expected(tmp_path, [0.9, 1.0])))
    assert found[2].value == pytest.approx(0.8)  # the mean of the two seeds' Hit@10
    path = tmp_path / "more.yaml"
    path.write_text(yaml.safe_dump({"numbers": [
        {"experiment": "demo", "attack": "wanet", "row": "par", "metric": "asr", "range": [0, 0.1]}]}))
    (missing,) = check(store, load_expected(path))
    assert missing.value is None and not missing.inside
    presets = tmp_path / "presets"
    presets.mkdir()
    assert expected_file(store, presets) is None
    (presets / "demo.expected.yaml").write_text("numbers: []\n")
    assert expected_file(store, presets) == presets / "demo.expected.yaml"


def test_numbers_of_a_part_the_run_left_out_are_not_checked(tmp_path, capsys):
    run = _run(tmp_path, asr=0.95)
    path = _expected(tmp_path, [0.9, 1.0])
    body = yaml.safe_load(path.read_text())
    body["numbers"] += [{"experiment": "demo/classifier", "attack": "badnet", "row": "none", "metric": "asr",
                         "range": [0.9, 1.0]},
                        {"experiment": "demo", "attack": "wanet", "row": "par", "metric": "asr", "range": [0, 0.1]}]
    path.write_text(yaml.safe_dump(body))
    assert main(["report", "--check", str(run), "--expected", str(path)]) == 1  # wanet/par is missing from demo
    out = capsys.readouterr().out
    assert "OFF  demo: wanet / par / asr: missing" in out and "OFF  demo/classifier" not in out
    assert "3 of 4 numbers inside their expected ranges; 1 off; 1 not checked: this run holds no demo/classifier" in out
    body["numbers"].pop()
    path.write_text(yaml.safe_dump(body))
    assert main(["report", "--check", str(run), "--expected", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)["check"]
    assert summary["inside"] == summary["total"] == 3 and summary["not_run"] == 1


def test_bad_expected_files_and_runs(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"numbers": [{"experiment": "demo", "attack": "a", "row": "r", "metric": "m",
                                                "range": [0.9, 0.1]}]}))
    with pytest.raises(InputError, match="low > high"):
        load_expected(bad)
    bad.write_text("numbers: [{experiment: demo}]\n")
    with pytest.raises(InputError, match=r"numbers\[0\] needs"):
        load_expected(bad)
    assert main(["report", "--check", str(tmp_path / "nothing")]) == 2
    assert "no results.db" in capsys.readouterr().err


def test_shipped_expected_ranges_parse():
    from poisonlab.bench.spec import PRESETS

    files = sorted(PRESETS.glob("*.expected.yaml"))
    for path in files:
        assert load_expected(path), path


def test_ranges_from_two_runs_and_their_seeds_hold_both(tmp_path):
    from poisonlab.report.check import envelope, headline, headline_seeds, write_expected

    stores = []
    for i, asr in enumerate((0.91, 0.97)):
        store = ResultsStore(tmp_path / f"r{i}" / "results.db")
        store.put("demo", "badnet", "par", {"ca": 0.70 + i / 100, "asr": asr, "final_s_mean": 3.0})
        store.put("demo/ssl", "poisoned", "probe", {"fp": 280 + 5 * i, "asr": 0.85})
        store.put_point("demo/text", "attack-2", "none", 300, 0, {"hit@10": 0.5 + i / 10, "min_rank": 7.0})
        stores.append(store)
    stores[1].put("demo", "badnet", "none", {"asr": 0.8}, seed=0)
    stores[1].put("demo", "badnet", "none", {"asr": 0.9}, seed=1)  # one run with two seeds: both in the range
    stores[0].put("demo", "badnet", "none", {"asr": 0.95})
    assert headline(stores[1], "demo")[next(e for e in headline(stores[1], "demo") if e.row == "none")] == \
        pytest.approx(0.85)
    numbers = envelope([headline_seeds(s, "demo") for s in stores], margin=0.02)
    by_label = {e.label: (e.low, e.high) for e in numbers}
    assert by_label["demo: badnet / par / asr"] == pytest.approx((0.89, 0.99))
    assert by_label["demo: badnet / none / asr"] == pytest.approx((0.78, 0.97))
    assert by_label["demo/ssl: poisoned / probe / fp"] == pytest.approx((280 - 0.2 * 285, 285 + 0.2 * 285))
    assert by_label["demo/text: attack-2 / none @ 300 / hit@10"] == pytest.approx((0.48, 0.62))
    assert not any("final_s" in label for label in by_label)
    write_expected(tmp_path / "e.yaml", "demo", numbers, [{"command": "x", "machine": "y"}], 0.02)
    for store in stores:
        assert all(f.inside for f in check(store, load_expected(tmp_path / "e.yaml")))


def test_orderings_are_stated_only_where_the_seed_ranges_do_not_overlap():
    from poisonlab.bench.store import Spread
    from poisonlab.report.spread import ordering_rows, spread_rows

    table = {("a", "par"): {"asr": Spread((0.02, 0.05, 0.04))}, ("a", "finetune"): {"asr": Spread((0.6, 0.75, 0.7))},
             ("a", "cleanclip"): {"asr": Spread((0.5, 0.65, 0.03))}}
    rows = {(r[1].split()[0], r[2].split()[0]): r[4] for r in ordering_rows(table, ["a"], ["finetune", "cleanclip", "par"])[1:]}
    assert rows[("par", "finetune")] == "yes, on every seed"
    assert rows[("cleanclip", "finetune")] == "overlap: no ordering"  # 0.65 > 0.6
    assert rows[("par", "cleanclip")] == "overlap: no ordering"  # 0.03 < 0.05
    stable = {r[0]: r[-1] for r in spread_rows(table, ("asr",))[1:]}
    assert stable == {"a / cleanclip": "**unstable**", "a / finetune": "stable", "a / par": "stable"}


def test_readme_tables_are_written_from_the_store(tmp_path):
    from poisonlab.bench.spec import load_spec
    from poisonlab.report.headline import BEGIN, END, headline_block, replace_block
    from poisonlab.utils.machine import describe

    spec = {"name": "tiny", "pretrain": {"n": 8, "epochs": 1, "lr": 1e-3},
            "poison": {"n": 8, "epochs": 1, "lr": 1e-3, "target": "star", "rate": 0.1},
            "attacks": [{"name": "badnet", "trigger": "badnet"}], "cleaning": {"n": 8},
            "defenses": [{"name": "par", "defense": "par"}]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    store = ResultsStore(tmp_path / "results.db")
    store.put("tiny", "badnet", "none", {"ca": 0.812, "asr": 0.975})
    store.put("tiny", "badnet", "par", {"ca": 0.701, "asr": 0.05}, seed=0)
    store.put("tiny", "badnet", "par", {"ca": 0.703, "asr": 0.07}, seed=1)
    store.put_document("tiny", "machine", describe(2, 1))
    block = headline_block(store, load_spec(tmp_path / "s.yaml"), "make demo")
    assert "| badnet | — / — | 81.2 / 97.5 | 70.2±0.1 / 6.0±1.4 |" in block
    assert "From `make demo` on a " in block and "2 processes x 1 thread" in block
    readme = f"# x\n\nbefore\n{BEGIN}\nold table\n{END}\nafter\n"
    new = replace_block(readme, block)
    assert "old table" not in new and block in new and new.startswith("# x\n\nbefore\n") and new.endswith(f"{END}\nafter\n")
    assert replace_block(new, block) == new
    with pytest.raises(InputError):
        replace_block("no markers", block)
    shipped = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert shipped.index(BEGIN) < shipped.index(END), "the README holds the generated block"


def test_a_metric_without_a_value_is_stored_as_nan(tmp_path):
    import math

    store = ResultsStore(tmp_path / "r.db")
    store.put("e", "text-attack-1", "cosine-filter (detect)", {"recall": 0.0, "precision": None}, seed=0)
    store.put("e", "text-attack-1", "cosine-filter (detect)", {"recall": 0.5, "precision": 1.0}, seed=1)
    store.put_point("e", "a", "none", 4, 0, {"hit@10": None})
    spread = store.spread("e")[("text-attack-1", "cosine-filter (detect)")]
    assert spread["recall"].values == (0.0, 0.5) and math.isnan(spread["precision"].values[0])
    assert spread["precision"].values[1] == 1.0
    assert math.isnan(store.points("e")[0].metrics["hit@10"])
