"""Pretrained models the way open_clip resolves them, from a Hugging Face cache the test writes.

No test touches the network: the hub is offline and the cache holds what the test put there.
"""

from __future__ import annotations

import hashlib
import json

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import save_file

from poisonlab.cli import main
from poisonlab.models import create_clip
from poisonlab.models.clip import CONFIG_DIR

REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def fake_hub_model(cache, repo="poisonlab/tiny-clip"):
    """A tiny open_clip model in the hub cache layout: refs/main -> snapshots/<rev>/files."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / REVISION
    snap.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(REVISION)
    model_cfg = json.loads((CONFIG_DIR / "poisonlab-tiny-rn.json").read_text())
    mean, std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    (snap / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": model_cfg, "preprocess_cfg": {"mean": mean, "std": std}}))
    reference = create_clip("poisonlab-tiny-rn", seed=7)
    weights = snap / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.model.state_dict().items()}, str(weights))
    return reference, weights


def test_hf_hub_model_from_the_cache(tmp_path, offline, capsys):
    cache = tmp_path / "hub"
    reference, weights = fake_hub_model(cache)
    bundle = create_clip("hf-hub:poisonlab/tiny-clip", cache_dir=str(cache))
    for (k, a), (_, b) in zip(reference.model.state_dict().items(), bundle.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert bundle.mean == (0.5, 0.5, 0.5) and bundle.std == (0.25, 0.25, 0.25)
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert bundle.provenance == {"init": "pretrained", "model": "hf-hub:poisonlab/tiny-clip",
                                 "file": "open_clip_model.safetensors", "sha256": sha}
    # fine-tuned from the hub model: the checkpoint records its source
    out = tmp_path / "ft"
    code = main(["train", "clip", "--model", "hf-hub:poisonlab/tiny-clip", "--cache-dir", str(cache),
                 "--dataset", "shapes", "--n", "64", "--steps", "1", "--batch-size", "32", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    parent = json.loads((out / "model.json").read_text())["poisonlab"]["provenance"]["parent"]
    assert parent["model"] == "hf-hub:poisonlab/tiny-clip" and parent["sha256"] == sha
    capsys.readouterr()
    assert main(["eval", "--model", "hf-hub:poisonlab/tiny-clip", "--cache-dir", str(cache), "--dataset", "shapes",
                 "--n", "40", "--json"]) == 0
    assert "ca" in json.loads(capsys.readouterr().out)
    assert main(["eval", "--model", str(out / "model.safetensors"), "--dataset", "shapes", "--n", "40"]) == 0


@pytest.mark.parametrize("argv, names", [
    (["--model", "RN50", "--pretrained", "openai"], "model RN50, pretrained 'openai'"),
    (["--model", "hf-hub:nobody/nothing"], "model hf-hub:nobody/nothing"),
])
def test_offline_without_cache_is_one_clear_line(tmp_path, offline, capsys, argv, names):
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["eval", *argv, "--cache-dir", str(empty), "--dataset", "shapes", "--n", "20"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert names in err and str(empty) in err and "HF_HUB_OFFLINE" in err


def test_models_lists_tags_and_unknown_tags_are_refused(capsys):
    assert main(["models", "RN50", "--json"]) == 0
    assert "openai" in json.loads(capsys.readouterr().out)["RN50"]
    assert main(["eval", "--model", "RN50", "--pretrained", "nonsense", "--dataset", "shapes", "--n", "20"]) == 2
    assert "neither a file nor a pretrained tag of RN50" in capsys.readouterr().err
    assert main(["eval", "--model", "RN50", "--dataset", "shapes", "--n", "20"]) == 2
    assert "add --pretrained TAG" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["train", "clip"], ["eval"], ["clean"], ["audit"], ["detect"], ["repair"],
                                     ["probe"], ["clean-encoder"], ["scan"]])
def test_every_command_that_reads_a_model_takes_pretrained(command, capsys):
    assert main([*command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "--pretrained" in text and "--cache-dir" in text


def test_probe_a_hub_model(tmp_path, offline, capsys):
    cache = tmp_path / "hub"
    fake_hub_model(cache)
    code = main(["probe", "--model", "hf-hub:poisonlab/tiny-clip", "--cache-dir", str(cache), "--dataset", "shapes",
                 "--n", "200", "--probe-epochs", "2", "--trigger", "patch-image", "--target", "star",
                 "--trigger-param", "size=6", "--json"])
    assert code == 0, capsys.readouterr().err
    assert "fp" in json.dumps(json.loads(capsys.readouterr().out)).lower()
