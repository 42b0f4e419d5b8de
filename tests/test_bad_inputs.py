"""Bad input through the CLI, in-process: exit 2, one line on stderr, no traceback, nothing written
at the final output paths. The fixtures are small user files of the wrong kind or shape."""

from __future__ import annotations

import io
import json
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from poisonlab.cli import main
from poisonlab.models import create_clip
from poisonlab.models.classifier import create_classifier, create_encoder, save_classifier
from poisonlab.models.clip import save_clip
from tests.conftest import write_png


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 12), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _tar(path, text: bytes = b"a red circle", cls: bytes = b"0") -> str:
    with tarfile.open(path, "w") as tar:
        for k in range(4):
            _add(tar, f"{k:04d}.png", _png())
            _add(tar, f"{k:04d}.txt", text if k == 2 else b"a red circle")
            _add(tar, f"{k:04d}.cls", cls if k == 2 else b"0")
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad-inputs")
    f = {"dir": str(d)}
    f["clip"] = str(save_clip(create_clip("poisonlab-tiny-rn"), d / "clip" / "model.safetensors"))
    names = ["circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "ring", "crescent", "heart"]
    f["clf"] = str(save_classifier(create_classifier("poisonlab-resnet-tiny", 10, 32, names), d / "clf" / "model.safetensors"))
    f["enc"] = str(save_classifier(create_encoder("poisonlab-resnet-tiny", 32), d / "enc" / "model.safetensors"))
    side = json.loads((d / "clf" / "model.json").read_text())
    (d / "clf-noarch").mkdir()
    (d / "clf-noarch" / "model.safetensors").write_bytes((d / "clf" / "model.safetensors").read_bytes())
    (d / "clf-noarch" / "model.json").write_text(json.dumps({"poisonlab": {"format": side["poisonlab"].get("format")}}))
    f["clf_noarch"] = str(d / "clf-noarch" / "model.safetensors")
    clip_side = json.loads((d / "clip" / "model.json").read_text())
    clip_side["preprocess_cfg"]["mean"] = "zero"
    (d / "clip-badmean").mkdir()
    (d / "clip-badmean" / "model.safetensors").write_bytes((d / "clip" / "model.safetensors").read_bytes())
    (d / "clip-badmean" / "model.json").write_text(json.dumps(clip_side))
    f["clip_badmean"] = str(d / "clip-badmean" / "model.safetensors")
    (d / "clip-int8").mkdir()
    weights = load_file(d / "clip" / "model.safetensors")
    save_file({k: v.to(torch.int8) if v.is_floating_point() else v for k, v in weights.items()},
              d / "clip-int8" / "model.safetensors")
    (d / "clip-int8" / "model.json").write_text((d / "clip" / "model.json").read_text())
    f["clip_int8"] = str(d / "clip-int8" / "model.safetensors")
    (d / "notmodel.safetensors").write_bytes(b"this is not a safetensors file")
    f["garbage"] = str(d / "notmodel.safetensors")
    (d / "evil.pt").write_bytes(pickle.dumps({"state_dict": {"w": 1}, "f": print}))
    f["evil"] = str(d / "evil.pt")
    (d / "img").mkdir()
    write_png(d / "img" / "a.png")
    (d / "img" / "b.png").write_bytes(b"not a png")
    (d / "img" / "latin1.csv").write_bytes("path,caption\na.png,une image caf\xe9\n".encode("latin-1"))
    f["latin1"] = str(d / "img" / "latin1.csv")
    (d / "img" / "rows.csv").write_text("path,caption\na.png\n")
    f["short_row"] = str(d / "img" / "rows.csv")
    (d / "img" / "missing.csv").write_text("path,caption\nnope.png,a cat\n")
    f["missing_img"] = str(d / "img" / "missing.csv")
    f["tar_txt"] = _tar(d / "badtxt.tar", text=b"\xff\xfe bad")
    f["tar_cls"] = _tar(d / "badcls.tar", cls=b"zero")
    (d / "cifar-keys").mkdir()
    for name in ("data_batch_1", "test_batch"):
        (d / "cifar-keys" / name).write_bytes(pickle.dumps({b"pixels": np.zeros((2, 3072), np.uint8)}))
    f["cifar_keys"] = str(d / "cifar-keys")
    (d / "cifar-shape").mkdir()
    for name in ("data_batch_1", "test_batch"):
        (d / "cifar-shape" / name).write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    f["cifar_shape"] = str(d / "cifar-shape")
    plan = {"attack": "clip-dirty", "params": {}, "seed": 0, "num_samples": 40, "trigger": {"name": "badnet", "params": {}},
            "dataset": {"name": "shapes", "size": 40, "seed": 0, "split": "train", "image_size": 32},
            "entries": [{"index": 99, "triggered": True, "caption": "a star"}]}
    (d / "plan-index.json").write_text(json.dumps(plan))
    f["plan_index"] = str(d / "plan-index.json")
    plan["entries"] = [{"index": -1, "triggered": True}]
    (d / "plan-negative.json").write_text(json.dumps(plan))
    f["plan_negative"] = str(d / "plan-negative.json")
    plan["entries"] = [{"index": 3, "label": 57}]
    (d / "plan-label.json").write_text(json.dumps(plan))
    f["plan_label"] = str(d / "plan-label.json")
    (d / "plan-garbage.json").write_text("{not json")
    f["plan_garbage"] = str(d / "plan-garbage.json")
    (d / "a-file").write_text("x")
    f["file"] = str(d / "a-file")
    return f


POISON = ["poison", "--dataset", "shapes", "--n", "40", "--attack", "clip-dirty", "--target", "star"]
TRAIN = ["train", "clip", "--dataset", "shapes", "--n", "32", "--batch-size", "16", "--steps", "1"]
CLF = ["train", "classifier", "--dataset", "shapes", "--n", "32", "--batch-size", "16", "--steps", "1"]
SSL = ["train", "ssl", "--dataset", "shapes", "--n", "32", "--batch-size", "16", "--steps", "1"]
EVAL = ["eval", "--dataset", "shapes", "--split", "test", "--n", "20"]

CASES = {
    # poisoning: trigger and attack parameters, budgets, classes
    "trigger size negative": [*POISON, "--rate", "0.1", "--trigger", "badnet", "--trigger-param", "size=-3"],
    "trigger size text": [*POISON, "--rate", "0.1", "--trigger", "badnet", "--trigger-param", "size=abc"],
    "trigger size fraction": [*POISON, "--rate", "0.1", "--trigger", "badnet", "--trigger-param", "size=2.5"],
    "trigger size zero": [*POISON, "--rate", "0.1", "--trigger", "badnet", "--trigger-param", "size=0"],
    "trigger size too big": [*POISON, "--rate", "0.1", "--trigger", "badnet", "--trigger-param", "size=99"],
    "wanet s nan text": [*POISON, "--rate", "0.1", "--trigger", "wanet", "--trigger-param", "s=nan"],
    "wanet s NaN": [*POISON, "--rate", "0.1", "--trigger", "wanet", "--trigger-param", "s=NaN"],
    "wanet s negative": [*POISON, "--rate", "0.1", "--trigger", "wanet", "--trigger-param", "s=-1"],
    "wanet k one": [*POISON, "--rate", "0.1", "--trigger", "wanet", "--trigger-param", "k=1"],
    "blend alpha zero": [*POISON, "--rate", "0.1", "--trigger", "blended", "--trigger-param", "alpha=0"],
    "blend alpha two": [*POISON, "--rate", "0.1", "--trigger", "blended", "--trigger-param", "alpha=2"],
    "blend alpha infinity": [*POISON, "--rate", "0.1", "--trigger", "blended", "--trigger-param", "alpha=Infinity"],
    "unknown trigger parameter": [*POISON, "--rate", "0.1", "--trigger", "badnet", "--trigger-param", "colour=red"],
    "trigger param without value": [*POISON, "--rate", "0.1", "--trigger", "badnet", "--trigger-param", "size"],
    "unknown trigger": [*POISON, "--rate", "0.1", "--trigger", "no-such"],
    "unknown attack": ["poison", "--dataset", "shapes", "--n", "40", "--attack", "nope", "--rate", "0.1", "--out", "{out}"],
    "rate zero": [*POISON, "--rate", "0", "--trigger", "badnet"],
    "rate above one": [*POISON, "--rate", "1.5", "--trigger", "badnet"],
    "rate nan": [*POISON, "--rate", "nan", "--trigger", "badnet"],
    "count zero": [*POISON, "--count", "0", "--trigger", "badnet"],
    "count too many": [*POISON, "--count", "400", "--trigger", "badnet"],
    "rate and count": [*POISON, "--rate", "0.1", "--count", "3", "--trigger", "badnet"],
    "unknown target class": ["poison", "--dataset", "shapes", "--n", "40", "--attack", "clip-dirty", "--target", "dog",
                             "--rate", "0.1", "--trigger", "badnet", "--out", "{out}"],
    "text attack same classes": ["poison", "--dataset", "shapes", "--n", "40", "--attack", "text-attack-2",
                                 "--source", "star", "--target", "star", "--count", "2", "--out", "{out}"],
    "text attack target index": ["poison", "--dataset", "shapes", "--n", "40", "--attack", "text-attack-1",
                                 "--source", "circle", "--target-index", "400", "--count", "2", "--out", "{out}"],
    "poison seed huge": [*POISON, "--rate", "0.1", "--trigger", "badnet", "--seed", "12345678901234567890123"],
    "poison n zero": ["poison", "--dataset", "shapes", "--n", "0", "--attack", "clip-dirty", "--target", "star",
                      "--rate", "0.1", "--trigger", "badnet", "--out", "{out}"],
    "poison image size zero": [*POISON, "--rate", "0.1", "--trigger", "badnet", "--image-size", "0"],
    "poison out empty": [*POISON[:-2], "--target", "star", "--rate", "0.1", "--trigger", "badnet", "--out", ""],
    "poison out under a file": [*POISON, "--rate", "0.1", "--trigger", "badnet", "--out", "{file}/sub"],
    "unknown dataset": ["poison", "--dataset", "no-such-data", "--attack", "clip-dirty", "--target", "star",
                        "--rate", "0.1", "--trigger", "badnet", "--out", "{out}"],
    # user files of the wrong kind or shape
    "latin-1 csv": ["train", "clip", "--dataset", "{latin1}", "--steps", "1", "--out", "{out}"],
    "csv short row": ["train", "clip", "--dataset", "{short_row}", "--steps", "1", "--out", "{out}"],
    "csv missing image": ["train", "clip", "--dataset", "{missing_img}", "--steps", "1", "--out", "{out}"],
    "tar caption not utf-8": ["train", "clip", "--dataset", "{tar_txt}", "--steps", "1", "--batch-size", "2", "--out", "{out}"],
    "tar class not int": ["train", "classifier", "--dataset", "{tar_cls}", "--steps", "1", "--batch-size", "2",
                          "--out", "{out}"],
    "cifar wrong keys": [*CLF[:3], "{cifar_keys}", "--batch-size", "2", "--steps", "1", "--out", "{out}"],
    "cifar wrong shape": [*CLF[:3], "{cifar_shape}", "--batch-size", "2", "--steps", "1", "--out", "{out}"],
    "plan index past the end": ["train", "clip", "--dataset", "{plan_index}", "--steps", "1", "--out", "{out}"],
    "plan index negative": ["train", "clip", "--dataset", "{plan_negative}", "--steps", "1", "--out", "{out}"],
    "plan label no class has": ["train", "clip", "--dataset", "{plan_label}", "--steps", "1", "--out", "{out}"],
    "plan not json": ["train", "clip", "--dataset", "{plan_garbage}", "--steps", "1", "--out", "{out}"],
    "sidecar mean a string": [*EVAL, "--model", "{clip_badmean}"],
    "classifier sidecar without arch": ["repair", "--method", "finetune", "--model", "{clf_noarch}", "--dataset", "shapes",
                                        "--n", "200", "--out", "{out}"],
    "checkpoint not safetensors": [*EVAL, "--model", "{garbage}"],
    "pickled checkpoint with arch": [*EVAL, "--model", "{evil}", "--arch", "poisonlab-tiny-rn"],
    "model file missing": [*EVAL, "--model", "{dir}/none.safetensors"],
    "unknown architecture": [*EVAL, "--model", "no-such-arch"],
    # training budgets
    "train lr nan": [*TRAIN, "--lr", "nan", "--out", "{out}"],
    "train epochs inf": [*TRAIN[:-2], "--epochs", "inf", "--out", "{out}"],
    "train batch zero": [*TRAIN[:6], "--batch-size", "0", "--steps", "1", "--out", "{out}"],
    "train steps zero": [*TRAIN[:-1], "0", "--out", "{out}"],
    "train warmup negative": [*TRAIN, "--warmup", "-5", "--out", "{out}"],
    "classifier weight decay nan": [*CLF, "--weight-decay", "nan", "--out", "{out}"],
    "classifier checkpoint every negative": [*CLF, "--checkpoint-every", "-1", "--out", "{out}"],
    "classifier unknown model": [*CLF, "--model", "no-such-net", "--out", "{out}"],
    "ssl unknown method": [*SSL, "--method", "swav", "--out", "{out}"],
    "ssl unknown param": [*SSL, "--param", "queue_size=-4", "--out", "{out}"],
    "ssl views unknown": [*SSL, "--views", "fancy", "--out", "{out}"],
    "resume nothing saved": [*TRAIN, "--resume", "--out", "{out}"],
    "train out under a file": [*TRAIN, "--out", "{file}/sub"],
    # measuring, defending, detecting
    "eval unknown trigger": [*EVAL, "--model", "{clip}", "--trigger", "nope", "--target", "star"],
    "eval trigger without target": [*EVAL, "--model", "{clip}", "--trigger", "badnet"],
    "eval unknown target": [*EVAL, "--model", "{clip}", "--trigger", "badnet", "--target", "dog"],
    "eval source unknown": [*EVAL, "--model", "{clip}", "--source", "dog", "--target", "star"],
    "audit threshold nan": ["audit", "--model", "{clip}", "--dataset", "shapes", "--n", "20", "--threshold", "nan",
                            "--out", "{out}"],
    "audit drop fraction one": ["audit", "--model", "{clip}", "--dataset", "shapes", "--n", "20", "--drop-fraction", "1",
                                "--out", "{out}"],
    "audit both criteria": ["audit", "--model", "{clip}", "--dataset", "shapes", "--n", "20", "--threshold", "0.8",
                            "--drop-fraction", "0.1", "--out", "{out}"],
    "show rows zero": ["show", "--rows", "0", "--out", "{out}/x.png"],
    "show rows negative": ["show", "--rows", "-2", "--out", "{out}/x.png"],
    "show unknown trigger": ["show", "--triggers", "badnet,nope", "--out", "{out}/x.png"],
    "probe epochs zero": [*EVAL, "--model", "{enc}", "--target", "star", "--probe-epochs", "0"],
    "probe labelled share zero": [*EVAL, "--model", "{enc}", "--target", "star", "--labelled", "0"],
    "clean unknown defense": ["clean", "--defense", "nope", "--model", "{clip}", "--dataset", "shapes", "--n", "20",
                              "--steps", "1", "--out", "{out}"],
    "clean lr nan": ["clean", "--defense", "finetune", "--model", "{clip}", "--dataset", "shapes", "--n", "20",
                     "--steps", "1", "--lr", "nan", "--out", "{out}"],
    "clean bad param": ["clean", "--defense", "par", "--model", "{clip}", "--dataset", "shapes", "--n", "20",
                        "--steps", "1", "--param", "tau=abc", "--out", "{out}"],
    "repair share above one": ["repair", "--method", "finetune", "--model", "{clf}", "--dataset", "shapes", "--n", "200",
                               "--trusted-share", "1.5", "--out", "{out}"],
    "repair unknown method": ["repair", "--method", "nope", "--model", "{clf}", "--dataset", "shapes", "--n", "200",
                              "--out", "{out}"],
    "detect unknown method": ["detect", "--method", "nope", "--model", "{clf}", "--dataset", "shapes", "--n", "200",
                              "--out", "{out}"],
    "detect share zero": ["detect", "--method", "cti", "--model", "{clf}", "--dataset", "shapes", "--n", "200",
                          "--trusted-share", "0", "--out", "{out}"],
    "detect cti on an encoder": ["detect", "--method", "cti", "--model", "{enc}", "--dataset", "shapes", "--n", "200",
                                 "--out", "{out}"],
    "clean with a filter": ["clean", "--defense", "filter", "--model", "{clip}", "--dataset", "shapes", "--n", "20",
                            "--steps", "1", "--out", "{out}"],
    "repair with a clip defense": ["repair", "--method", "par", "--model", "{clf}", "--dataset", "shapes", "--n", "200",
                                   "--out", "{out}"],
    "clean-encoder with a clip defense": ["clean-encoder", "--defense", "cleanclip", "--model", "{clf}", "--dataset",
                                          "shapes", "--n", "40", "--out", "{out}"],
    "defend an option the method has not": ["defend", "--method", "par", "--model", "{clip}", "--dataset", "shapes",
                                             "--trusted-share", "0.1", "--out", "{out}"],
    "defend a method of another family": ["defend", "--method", "pivotal-tuning", "--model", "{clip}", "--dataset",
                                          "shapes", "--out", "{out}"],
    "defend a file of no family": ["defend", "--method", "par", "--model", "{garbage}", "--dataset", "shapes",
                                   "--out", "{out}"],
    "train safeclip warm-up longer than the run": ["train", "clip", "--dataset", "shapes", "--n", "64", "--epochs", "2",
                                                   "--batch-size", "32", "--defense", "safeclip", "--out", "{out}"],
    "train roclip pool larger than the data": ["train", "clip", "--dataset", "shapes", "--n", "64", "--epochs", "4",
                                               "--batch-size", "32", "--defense", "roclip", "--out", "{out}"],
    "train safeclip safe share above one": ["train", "clip", "--dataset", "shapes", "--n", "64", "--epochs", "9",
                                            "--batch-size", "32", "--defense", "safeclip", "--defense-param",
                                            "max_share=1.5", "--out", "{out}"],
    "train safeclip safe share zero": ["train", "clip", "--dataset", "shapes", "--n", "64", "--epochs", "9",
                                       "--batch-size", "32", "--defense", "safeclip", "--defense-param", "max_share=0",
                                       "--out", "{out}"],
    "train with a cleaning defense": ["train", "clip", "--dataset", "shapes", "--n", "64", "--epochs", "1",
                                      "--batch-size", "32", "--defense", "par", "--out", "{out}"],
    "train defense-param without a defense": ["train", "clip", "--dataset", "shapes", "--n", "64", "--epochs", "1",
                                              "--defense-param", "pool_size=8", "--out", "{out}"],
    "defend with a training-time defense": ["defend", "--method", "safeclip", "--model", "{clip}", "--dataset", "shapes",
                                            "--out", "{out}"],
    "quantized (int8) CLIP weights": [*EVAL, "--model", "{clip_int8}"],
    "badclip made on a classifier": [*POISON, "--rate", "0.1", "--attack", "badclip", "--model", "{clf}",
                                     "--out", "{out}"],
    "clean-encoder unknown defense": ["clean-encoder", "--defense", "nope", "--model", "{clf}", "--dataset", "shapes",
                                      "--n", "40", "--out", "{out}"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_one_line(case, files, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [a.format(out=out, **files) for a in CASES[case]]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, f"{case}: exit {code}: {err[-800:]}"
    assert "Traceback" not in err and len(err.splitlines()) == 1, f"{case}: {err[-800:]}"
    written = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert not any(p.name in ("model.safetensors", "plan.json", "kept.json", "x.png", "scores.csv") for p in written), \
        f"{case}: wrote {written}"


def test_a_classifier_where_a_clip_is_needed_is_named_as_such(files, capsys):
    """Its sidecar is poisonlab's, of another family: the line says so instead of 'not a sidecar'."""
    assert main([*POISON, "--rate", "0.1", "--attack", "badclip", "--model", files["clf"], "--out", files["dir"] + "/o"]) == 2
    assert "a poisonlab classifier checkpoint, where a CLIP model is needed" in capsys.readouterr().err


def test_csv_with_a_huge_caption_reads(tmp_path):
    """A 460 KB caption is a caption (the tokenizer truncates it), not an error."""
    from poisonlab.data import open_dataset

    write_png(tmp_path / "a.png")
    (tmp_path / "huge.csv").write_text("path,caption\na.png," + "x" * 460_000 + "\n")
    data = open_dataset(str(tmp_path / "huge.csv"))
    assert len(data) == 1 and len(data.captions()[0]) == 460_000


def test_the_table_has_at_least_60_cases():
    assert len(CASES) >= 60


def test_checkpoint_bytes_are_the_same_for_the_same_tensors(tmp_path):
    """safetensors writes its header in hash order; saved checkpoints are byte-identical anyway
    and load back to the same tensors."""
    import hashlib

    import torch
    from safetensors.torch import load_file

    from poisonlab.models.checkpoint import safetensors_bytes

    state = {name: torch.randn(3, 2, generator=torch.Generator().manual_seed(i)) for i, name in enumerate("abcdefgh")}
    blobs = {safetensors_bytes(state, {"format": "x", "model": "y", "more": "z"}) for _ in range(20)}
    assert len(blobs) == 1
    bundle = create_clip("poisonlab-tiny-rn")
    digests = set()
    for k in range(3):
        path = save_clip(bundle, tmp_path / f"m{k}.safetensors")
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1
    (path,) = [tmp_path / "m0.safetensors"]
    loaded = load_file(path)
    assert all(torch.equal(loaded[k], v) for k, v in bundle.model.state_dict().items())
