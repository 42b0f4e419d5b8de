"""Training options are judged before a run starts, and a diverging run stops without a checkpoint."""

from __future__ import annotations

import pytest

from poisonlab.cli import main

BASE = ["train", "clip", "--dataset", "shapes", "--n", "64", "--batch-size", "32"]


@pytest.mark.parametrize("bad", [
    ["--steps", "2", "--lr", "nan"], ["--steps", "2", "--lr", "inf"], ["--steps", "2", "--weight-decay", "nan"],
    ["--steps", "2", "--weight-decay", "-1"], ["--epochs", "inf"], ["--epochs", "nan"],
    ["--steps", "2", "--warmup", "-5"], ["--steps", "2", "--checkpoint-every", "-1"],
    ["--steps", "2", "--seed", "12345678901234567890123"], ["--steps", "2", "--data", "disk"],
    ["--steps", "2", "--workers", "-1"],
])
def test_bad_training_options_exit_2(tmp_path, capsys, bad):
    out = tmp_path / "run"
    code = main([*BASE, *bad, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (out / "model.safetensors").exists()


def test_diverging_loss_stops_with_exit_1_and_no_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    code = main([*BASE, "--steps", "6", "--lr", "1e30", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "the loss is" in err and "no final checkpoint" in err and len(err.strip().splitlines()) == 1
    assert not (out / "model.safetensors").exists()


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_objects_are_refused_for_safety(tmp_path, capsys):
    import pickle

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"state_dict": _Evil()}))
    code = main(["eval", "--model", str(evil), "--arch", "poisonlab-tiny-rn", "--dataset", "shapes", "--n", "20"])
    out, err = capsys.readouterr()
    assert code == 2 and "this must never run" not in out
    assert "refused for safety" in err and "weights_only=False" not in err and len(err.strip().splitlines()) == 1
