"""The streaming data path against the in-memory one, on small webdataset shards written here."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from poisonlab import attacks
from poisonlab.attacks.plan import PoisonedDataset
from poisonlab.cli import main
from poisonlab.data import make_shapes, open_dataset
from poisonlab.errors import InputError
from poisonlab.models import create_clip
from poisonlab.models.clip import save_clip
from poisonlab.train import ClipObjective, DistInfo, TrainConfig, Trainer
from poisonlab.train.stream import DataConfig, StreamItems, open_items

N_PER_SHARD = 64


def _jpeg(image: torch.Tensor) -> bytes:
    arr = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(folder, shards: int = 3, order=None, corrupt: str | None = None) -> list:
    """``shards`` shards of shapes pairs (JPEG, caption, class); ``corrupt`` names a key whose
    image bytes are cut short."""
    folder.mkdir(parents=True, exist_ok=True)
    data = make_shapes(n=shards * N_PER_SHARD, seed=3)
    order = list(range(len(data))) if order is None else order
    paths = []
    for s in range(shards):
        path = folder / f"part-{s:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in order[s * N_PER_SHARD:(s + 1) * N_PER_SHARD]:
                image, caption, label = data[i]
                key = f"{i:06d}"
                jpg = _jpeg(image)
                _add(tar, f"{key}.jpg", jpg[: len(jpg) // 3] if key == corrupt else jpg)
                _add(tar, f"{key}.txt", caption.encode())
                _add(tar, f"{key}.cls", str(label).encode())
        paths.append(path)
    (folder / "classnames.txt").write_text("\n".join(data.classnames) + "\n")  # clip_benchmark's layout
    return paths


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("wds") / "train")


def _plan(dataset):
    attack = attacks.create("clip-dirty", target="star", trigger="badnet-stripes", rate=0.1,
                            trigger_params={"size": 5})
    return attack(dataset, seed=1)


def test_brace_pattern_opens_every_shard(shards):
    pattern = str(shards[0].parent / "part-{00000..00002}.tar")
    data = open_dataset(pattern)
    assert len(data) == 3 * N_PER_SHARD
    assert data.keys()[:2] == ["000000", "000001"]
    assert data.classnames == make_shapes(n=1).classnames and data.classnames_source == "classnames.txt"
    with pytest.raises(InputError, match="do not exist"):
        open_dataset(str(shards[0].parent / "part-{00000..00004}.tar"))


def test_stream_and_memory_give_the_same_batches(shards):
    base = open_dataset(str(shards[0].parent))
    poisoned = PoisonedDataset(base, _plan(base))
    bundle = create_clip("poisonlab-tiny-rn", seed=0)
    memory = open_items(poisoned, 32, bundle.tokenize, DataConfig(mode="memory"))
    stream = open_items(poisoned, 32, bundle.tokenize, DataConfig(mode="stream", workers=2))
    assert (memory.mode, stream.mode) == ("memory", "stream")
    order = torch.randperm(len(poisoned), generator=torch.Generator().manual_seed(0))
    index_sets = list(order[:96].split(32))
    for a, b in zip(memory.batches(index_sets), stream.batches(index_sets), strict=True):
        for key in ("images", "tokens", "labels", "index", "poisoned"):
            assert torch.equal(a[key], b[key]), key
        assert a["captions"] == b["captions"]
    # the triggered images are the trigger applied to the clean decode, in both paths
    some = poisoned.plan.indices[:4]
    got = stream.batch(torch.tensor(some))
    assert got["poisoned"].all()
    trigger = poisoned.plan.build_trigger()
    for row, i in enumerate(some):
        from poisonlab.utils.seeding import make_generator
        ref = trigger(base[i][0][None], generator=make_generator("poison", 1, i))[0]
        assert torch.equal(got["images"][row], (ref.clamp(0, 1) * 255).round() / 255)


def test_auto_streams_above_the_memory_budget(shards):
    base = open_dataset(str(shards[0].parent))  # 192 x 3 x 32 x 32 bytes decoded
    assert open_items(base, 32, None, DataConfig()).mode == "memory"
    assert open_items(base, 32, None, DataConfig(memory_budget=192 * 3 * 32 * 32)).mode == "memory"
    assert open_items(base, 32, None, DataConfig(memory_budget=192 * 3 * 32 * 32 - 1, workers=0)).mode == "stream"
    assert open_items(base, 224, None, DataConfig(memory_budget=2 * 1024**3)).mode == "memory"
    assert open_items(base, 224, None, DataConfig(memory_budget=10**7, workers=0)).mode == "stream"


def test_plan_for_another_dataset_is_refused(shards, tmp_path):
    base = open_dataset(str(shards[0].parent))
    plan = _plan(base)
    assert all(e.key is not None for e in plan.entries)
    order = list(range(len(base)))
    i = plan.indices[0]
    j = next(k for k in range(len(base)) if k not in plan.indices)
    order[i], order[j] = order[j], order[i]  # two items swap places: same size, same keys overall
    reordered = open_dataset(str(write_shards(tmp_path / "reordered", order=order)[0].parent))
    with pytest.raises(InputError, match=f"plan made for another dataset: item {i} is key '{i:06d}', "
                                         f"the dataset has '{j:06d}'"):
        PoisonedDataset(reordered, plan)
    shuffled = open_dataset(str(write_shards(tmp_path / "shuffled", order=list(reversed(range(len(base)))))[0].parent))
    with pytest.raises(InputError, match="plan made for another dataset: item .* is key"):
        PoisonedDataset(shuffled, plan)
    with pytest.raises(InputError, match="it is for 192 items"):
        PoisonedDataset(open_dataset(str(shards[0])), plan)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_materialized_shards_round_trip(shards, tmp_path, capsys):
    out = tmp_path / "poisoned"
    code, text, err = run(capsys, "poison", "--dataset", str(shards[0].parent), "--attack", "clip-dirty",
                          "--target", "star", "--trigger", "badnet", "--rate", "0.05", "--out", str(out),
                          "--materialize", "--json")
    assert code == 0, err
    summary = json.loads(text)
    assert summary["data"].endswith("shards")
    base = open_dataset(str(shards[0].parent))
    poisoned = PoisonedDataset(base, _load_plan(out / "plan.json"))
    written = open_dataset(summary["data"])
    assert len(written) == len(base) and written.keys() == base.keys()
    changed = set(poisoned.plan.indices)
    for i in range(len(base)):
        if i in changed:
            assert written.samples[i].ext == "png"
            assert written[i][1] == poisoned[i][1] and written[i][2] == poisoned[i][2]
            assert torch.equal((written[i][0] * 255).round(), (poisoned[i][0].clamp(0, 1) * 255).round())
        else:  # byte for byte
            assert written.image_bytes(i) == base.image_bytes(i)
            assert written[i][1:] == base[i][1:]


def test_materialized_shards_read_back_with_webdataset(shards, tmp_path, capsys):
    """webdataset.WebDataset (what open_clip_train reads) sees the written shards' samples with the
    same keys, and a clean sample's members byte for byte."""
    import webdataset as wds

    out = tmp_path / "poisoned"
    code, text, err = run(capsys, "poison", "--dataset", str(shards[0].parent), "--attack", "clip-dirty",
                          "--target", "star", "--trigger", "badnet", "--rate", "0.05", "--out", str(out),
                          "--materialize", "--json")
    assert code == 0, err
    base = open_dataset(str(shards[0].parent))
    plan = _load_plan(out / "plan.json")
    written = sorted(Path(json.loads(text)["data"]).glob("*.tar"))
    samples = list(wds.WebDataset([str(p) for p in written], shardshuffle=False))
    assert [s["__key__"] for s in samples] == base.keys()
    poisoned = set(plan.indices)
    for i, sample in enumerate(samples):
        if i in poisoned:
            assert sample["png"][:8] == b"\x89PNG\r\n\x1a\n" and sample["txt"].decode() == plan.entries[
                plan.indices.index(i)].caption
        else:
            ext = base.samples[i].ext
            assert sample[ext] == base.image_bytes(i) and sample["txt"].decode().strip() == base.captions()[i]
    again = tmp_path / "again"
    assert run(capsys, "poison", "--dataset", str(shards[0].parent), "--attack", "clip-dirty", "--target", "star",
               "--trigger", "badnet", "--rate", "0.05", "--out", str(again), "--materialize")[0] == 0
    assert [p.read_bytes() for p in written] == [p.read_bytes() for p in sorted((again / "shards").glob("*.tar"))]


def _load_plan(path):
    from poisonlab.attacks.plan import PoisonPlan

    return PoisonPlan.load(path)


def _trainer(data, out, steps, crash_at=None):
    bundle = create_clip("poisonlab-tiny-rn", seed=0)
    objective = ClipObjective(bundle)
    if crash_at is not None:
        loss, count = objective.loss, [0]

        def crashing(batch, g):
            count[0] += 1
            if count[0] > crash_at:
                raise KeyboardInterrupt
            return loss(batch, g)

        objective.loss = crashing
    cfg = TrainConfig(steps=steps, batch_size=32, lr=1e-3, warmup=1, checkpoint_every=2, seed=4)
    return bundle, Trainer(objective, data, cfg, out, save_model=lambda p: save_clip(bundle, p), progress=False)


def test_stream_resume_ends_with_the_uninterrupted_weights(shards, tmp_path):
    base = open_dataset(str(shards[0].parent))
    tok = create_clip("poisonlab-tiny-rn", seed=0).tokenize

    def stream():
        return StreamItems(base, 32, tok, DataConfig(mode="stream", workers=1))

    full, trainer = _trainer(stream(), tmp_path / "full", 7)  # 6 steps per epoch: resumes mid-epoch 2
    trainer.fit()
    _, crashing = _trainer(stream(), tmp_path / "cut", 7, crash_at=5)
    with pytest.raises(KeyboardInterrupt):
        crashing.fit()
    resumed, trainer = _trainer(stream(), tmp_path / "cut", 7)
    trainer.fit(resume=True)
    assert trainer.step == 7
    memory, trainer = _trainer(open_items(base, 32, tok, DataConfig(mode="memory")), None, 7)
    trainer.fit()
    for (k, a), (_, b), (_, c) in zip(full.model.state_dict().items(), resumed.model.state_dict().items(),
                                      memory.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
        assert torch.equal(a, c), k


def _rank_worker(rank, world, init_file, shard_dir, out_dir):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    base = open_dataset(shard_dir)
    bundle = create_clip("poisonlab-tiny-rn", seed=0)
    objective = ClipObjective(bundle, rank, world)
    seen = []
    loss = objective.loss

    def recording(batch, g):
        seen.extend(batch["index"].tolist())
        return loss(batch, g)

    objective.loss = recording
    data = StreamItems(base, 32, bundle.tokenize, DataConfig(mode="stream", workers=1))
    cfg = TrainConfig(epochs=1, batch_size=16, lr=1e-3, seed=2)
    Trainer(objective, data, cfg, dist=DistInfo(rank=rank, world_size=world), progress=False).fit()
    torch.save(torch.tensor(seen), os.path.join(out_dir, f"seen{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_two_ranks_stream_every_sample_once(shards, tmp_path):
    mp.spawn(_rank_worker, args=(2, str(tmp_path / "init"), str(shards[0].parent), str(tmp_path)), nprocs=2, join=True)
    seen = [torch.load(tmp_path / f"seen{r}.pt", weights_only=True).tolist() for r in range(2)]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(3 * N_PER_SHARD))  # 192 = 6 global batches of 2 x 16


def test_corrupt_jpeg_exit_2_or_skipped(tmp_path, capsys):
    folder = write_shards(tmp_path / "bad", shards=2, corrupt="000070")[0].parent
    args = ["train", "clip", "--dataset", str(folder), "--steps", "4", "--batch-size", "32", "--out"]
    code, _, err = run(capsys, *args, str(tmp_path / "a"), "--data", "stream", "--workers", "0")
    assert code == 2
    assert "part-00001.tar: sample '000070'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a" / "model.safetensors").exists()
    code, text, err = run(capsys, *args, str(tmp_path / "b"), "--skip-bad-images", "--json", "--workers", "1")
    assert code == 0, err
    summary = json.loads(text.strip().splitlines()[-1])
    assert summary["data"]["mode"] == "stream"
    assert summary["data"]["skipped_images"] == 1
    sidecar = json.loads((tmp_path / "b" / "model.json").read_text())
    assert sidecar["poisonlab"]["provenance"]["skipped_images"] == 1


def test_sample_without_caption_is_named_or_skipped(tmp_path):
    path = tmp_path / "nocap.tar"
    image = _jpeg(make_shapes(n=1, seed=0)[0][0])
    with tarfile.open(path, "w") as tar:
        for key in ("a", "b"):
            _add(tar, f"{key}.jpg", image)
        _add(tar, "a.txt", b"a photo of a circle.")
        _add(tar, "b.txt", b"\xff\xfe")
    with pytest.raises(InputError, match="nocap.tar: sample 'b' has a caption that is not UTF-8"):
        open_dataset(str(path))
    data = open_dataset(str(path), skip_bad=True)
    assert len(data) == 1 and data.skipped == 1


def test_planning_reads_captions_and_labels_only(shards, monkeypatch):
    base = open_dataset(str(shards[0].parent))

    def no_images(self, index):
        raise AssertionError("planning decoded an image")

    monkeypatch.setattr(type(base), "image_bytes", no_images)
    assert len(_plan(base).entries) == round(0.1 * len(base))
    text = attacks.create("text-attack-2", source="circle", target="star", count=5)(base, seed=0)
    assert len(text.entries) == 5 and all(e.key is not None for e in text.entries)


def test_streamed_eval_skips_target_images_before_decoding(shards, monkeypatch):
    from poisonlab.metrics import ClipEvaluator
    from poisonlab.triggers import create as create_trigger

    base = open_dataset(str(shards[0].parent))
    bundle = create_clip("poisonlab-tiny-rn", seed=0)
    trig = create_trigger("badnet-stripes", size=5, location="bottom-right")
    full = ClipEvaluator(bundle, base, batch_size=40, data_config=DataConfig(mode="memory")).backdoor(trig, "star")
    read = []
    original = type(base).image_bytes

    def counting(self, index):
        read.append(index)
        return original(self, index)

    monkeypatch.setattr(type(base), "image_bytes", counting)
    ev = ClipEvaluator(bundle, base, batch_size=40, data_config=DataConfig(mode="stream", workers=0), skip_target=True)
    res = ev.backdoor(trig, "star")
    star = base.classnames.index("star")
    targets = {i for i, y in enumerate(base.labels()) if y == star}
    assert targets and not targets & set(read)
    assert res["target_images_skipped"] == len(targets) and "asr_all" not in res
    assert res["asr"] == pytest.approx(full["asr"])
