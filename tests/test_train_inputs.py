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


def _metrics_steps(out) -> list[int]:
    import json

    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_resume_refuses_another_run_and_says_when_there_is_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    code = main([*BASE, "--steps", "4", "--resume", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "nothing to resume" in err and not (out / "model.safetensors").exists()
    assert main([*BASE, "--steps", "4", "--checkpoint-every", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    for other, field in ((["--lr", "0.01"], "lr"), (["--seed", "3"], "seed"), (["--batch-size", "16"], "batch_size")):
        argv = [*BASE, "--steps", "4", "--checkpoint-every", "2", *other, "--resume", "--out", str(out)]
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and field in err and len(err.strip().splitlines()) == 1, err
    other_data = [a if a != "64" else "96" for a in BASE]
    code = main([*other_data, "--steps", "4", "--checkpoint-every", "2", "--resume", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "dataset" in err, err
    code = main([*BASE, "--steps", "4", "--checkpoint-every", "2", "--resume", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "finished" in err, err


def test_resume_keeps_each_metrics_step_once(tmp_path, capsys, monkeypatch):
    """A run killed at step 22 (metrics logged every 10 steps, its last checkpoint at step 15) resumes
    at 15: metrics has each logged step once, and the weights are the uninterrupted run's."""
    import torch
    from safetensors.torch import load_file

    from poisonlab.train.loop import Trainer

    argv = [*BASE, "--steps", "24", "--checkpoint-every", "15"]
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    step = Trainer._train_step

    def killed_at_4(self, *args):
        if self.step == 22:
            raise RuntimeError("killed")
        return step(self, *args)

    monkeypatch.setattr(Trainer, "_train_step", killed_at_4)
    out = tmp_path / "run"
    assert main([*argv, "--out", str(out)]) == 1
    assert _metrics_steps(out) == [10, 20]
    monkeypatch.setattr(Trainer, "_train_step", step)
    assert main([*argv, "--resume", "--out", str(out)]) == 0
    capsys.readouterr()
    assert _metrics_steps(out) == [10, 20, 24] == _metrics_steps(tmp_path / "whole")
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run ends with the uninterrupted weights"


def test_a_second_writer_is_refused_and_stale_temp_files_are_cleared(tmp_path, capsys):
    """While one run holds ``--out``, another exits 2 naming it; the next run there removes the
    temp files a killed run left (those with the folder's marker, and only those)."""
    import json
    import os

    from poisonlab.utils.output import run_lock

    out = tmp_path / "run"
    with run_lock(out):
        marker = json.loads((out / ".poisonlab-output.json").read_text())["marker"]
        code = main([*BASE, "--steps", "2", "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and f"pid {os.getpid()}" in err and len(err.strip().splitlines()) == 1
        assert not (out / "model.safetensors").exists()
    stale = out / f".train_state.pt.{marker}.a1b2c3d4.tmp"
    stale.write_bytes(b"half a checkpoint")
    mine = out / "notes.tmp"
    mine.write_text("the user's")
    look_alike = out / ".train_state.pt.a1b2c3d4.tmp"
    look_alike.write_text("the user's too")
    assert main([*BASE, "--steps", "2", "--out", str(out)]) == 0
    assert not stale.exists(), "the killed run's temp file was cleared"
    assert mine.read_text() == "the user's" and look_alike.read_text() == "the user's too"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp") and p not in (mine, look_alike)]


def test_kill_9_during_training_then_resume(tmp_path):
    """``kill -9`` while a run writes checkpoints, then ``--resume``: no temp file left at the end and
    the weights equal an uninterrupted run's (each run in its own process, one thread)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch
    from safetensors.torch import load_file

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "poisonlab", *BASE[:-2], "--batch-size", "16", "--steps", "30",
            "--checkpoint-every", "3"]
    whole = subprocess.run([*argv, "--out", str(tmp_path / "whole")], env=env, capture_output=True)
    assert whole.returncode == 0, whole.stderr.decode()[-500:]
    out = tmp_path / "run"
    proc = subprocess.Popen([*argv, "--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "train_state.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    again = subprocess.run([*argv, "--resume", "--out", str(out)], env=env, capture_output=True)
    assert again.returncode == 0, again.stderr.decode()[-500:]
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [line for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == len(set(steps)) == 3  # logged every 10 steps, each once


def test_resume_refuses_a_state_of_another_kind(tmp_path, capsys):
    import torch

    from poisonlab.utils.output import TRAIN_OUTPUTS, claim_output

    out = tmp_path / "run"
    claim_output(out, TRAIN_OUTPUTS)  # a poisonlab run folder whose state someone replaced
    torch.save({"step": 3, "model": {}}, out / "train_state.pt")  # no optimiser, no config
    code = main([*BASE, "--steps", "4", "--resume", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "not a poisonlab training state" in err and len(err.strip().splitlines()) == 1
    torch.save([1, 2, 3], out / "train_state.pt")
    assert main([*BASE, "--steps", "4", "--resume", "--out", str(out)]) == 2
    assert not (out / "model.safetensors").exists()
