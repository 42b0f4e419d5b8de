from __future__ import annotations

import json
import os

import open_clip
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import crash_on_call, rank_loss_and_grads

from poisonlab import attacks
from poisonlab.cli import main
from poisonlab.data import make_shapes
from poisonlab.errors import InputError
from poisonlab.metrics import ClipEvaluator, zero_shot_weights
from poisonlab.models import create_clip, load_clip, save_clip
from poisonlab.models.normalize import normalize_images
from poisonlab.train import ClipObjective, DistInfo, TrainConfig, Trainer, pair_tensors, train_clip
from poisonlab.triggers import create as create_trigger


@pytest.fixture(scope="module")
def tiny_data():
    return make_shapes(n=64, seed=11)


def test_checkpoint_roundtrip_and_plain_open_clip(tmp_path):
    bundle = create_clip("poisonlab-tiny-rn", seed=3)
    path = save_clip(bundle, tmp_path / "m.safetensors")
    again = load_clip(path)
    for (k, a), (_, b) in zip(bundle.model.state_dict().items(), again.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    (tmp_path / "configs").mkdir()
    side = json.loads((tmp_path / "m.json").read_text())
    (tmp_path / "configs" / "plain-arch.json").write_text(json.dumps(side["model_cfg"]))
    open_clip.add_model_config(tmp_path / "configs")
    model, _, preprocess = open_clip.create_model_and_transforms("plain-arch", pretrained=str(path))
    x = torch.rand(2, 3, 32, 32)
    bundle.model.eval()
    model.eval()
    torch.testing.assert_close(model.encode_image(bundle.normalize(x)), bundle.model.encode_image(bundle.normalize(x)))


def test_bad_checkpoints(tmp_path, capsys):
    path = save_clip(create_clip("poisonlab-tiny-rn"), tmp_path / "m.safetensors")
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(path.read_bytes()[:1000])
    (tmp_path / "t.json").write_bytes((tmp_path / "m.json").read_bytes())
    with pytest.raises(InputError, match="truncated"):
        load_clip(truncated)
    with pytest.raises(InputError, match="does not fit"):
        create_clip("poisonlab-tiny-vit", pretrained=str(path))
    code = main(["eval", "--model", str(truncated), "--dataset", "shapes", "--n", "20"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    code = main(["eval", "--model", str(path), "--arch", "poisonlab-tiny-vit", "--dataset", "shapes", "--n", "20"])
    assert code == 2 and "does not fit" in capsys.readouterr().err


def test_tokenize_repeated_captions_matches_open_clip():
    bundle = create_clip("poisonlab-tiny-rn", seed=0)
    captions = ["a red star.", "a blue circle.", "a red star.", "a red star.", "a green square."]
    reference = torch.stack([bundle.tokenizer([c])[0] for c in captions])  # one open_clip call per caption
    assert torch.equal(bundle.tokenize(captions), reference)


def test_normalize_images_values_and_channels_last_layout():
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    out = normalize_images(x, mean, std)
    for c in range(3):
        torch.testing.assert_close(out[:, c], (x[:, c] - mean[c]) / std[c])
    assert out.is_contiguous(memory_format=torch.channels_last)
    bundle = create_clip("poisonlab-tiny-rn")
    bundle.model.eval()
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    nchw = bundle.model.encode_image(bundle.normalize(images).contiguous())  # the layout does not change the result
    torch.testing.assert_close(bundle.encode_image(images, normalize=False), nchw, rtol=1e-4, atol=1e-5)


def test_zero_shot_weights_template_ensemble():
    bundle = create_clip("poisonlab-tiny-rn", seed=0)
    w = zero_shot_weights(bundle, ["circle", "star"], ["a {}.", "the {} here."])
    bundle.model.eval()
    with torch.no_grad():
        for row, name in zip(w, ["circle", "star"], strict=True):
            embs = [F.normalize(bundle.model.encode_text(bundle.tokenize([t.format(name)])), dim=-1)[0]
                    for t in ["a {}.", "the {} here."]]
            torch.testing.assert_close(row, F.normalize((embs[0] + embs[1]) / 2, dim=0))


def test_a_collapsed_clip_measures_no_accuracy_no_attack_no_retrieval(tiny_data):
    """Zero weights: every image and caption embeds the same. argmax would call every image class 0
    (ASR 100% on that target) and every retrieval a hit; a tie is no prediction and no hit."""
    bundle = create_clip("poisonlab-tiny-rn", seed=0)
    with torch.no_grad():
        for p in bundle.model.parameters():
            p.zero_()
    ev = ClipEvaluator(bundle, tiny_data, batch_size=16)
    first = tiny_data.classnames[0]
    assert ev.clean_accuracy() == 0.0
    assert ev.backdoor(create_trigger("badnet", size=4), first)["asr"] == 0.0
    assert set(ev.retrieval().values()) == {0.0}


def test_evaluator_asr_matches_bruteforce(tiny_data):
    bundle = create_clip("poisonlab-tiny-rn", seed=0)
    ev = ClipEvaluator(bundle, tiny_data, batch_size=16)
    trig = create_trigger("badnet-stripes", size=5, location="bottom-right")
    res = ev.backdoor(trig, "star")
    weights = zero_shot_weights(bundle, tiny_data.classnames, tiny_data.templates)
    star = tiny_data.classnames.index("star")
    hits = total = 0
    bundle.model.eval()
    with torch.no_grad():
        for i in range(len(tiny_data)):
            image, _, label = tiny_data[i]
            if label == star:
                continue
            emb = bundle.encode_image(trig(image[None]))
            hits += int((emb @ weights.T).argmax() == star)
            total += 1
    assert res["asr"] == pytest.approx(hits / total)
    ev.clean_accuracy()
    ev.backdoor(trig, "star")
    assert ev.passes == 2, "clean and triggered embeddings are each computed once"


def _run_training(tiny_data, out, steps, crash_at=None):
    bundle = create_clip("poisonlab-tiny-rn", seed=0)
    data = pair_tensors(tiny_data, bundle.tokenize)
    objective = ClipObjective(bundle)
    if crash_at is not None:
        crash_on_call(objective, crash_at)
    cfg = TrainConfig(steps=steps, batch_size=16, lr=1e-3, warmup=2, checkpoint_every=3, seed=5)
    trainer = Trainer(objective, data, cfg, out, save_model=lambda p: save_clip(bundle, p), progress=False)
    return bundle, trainer


def test_resume_is_exact(tiny_data, tmp_path):
    full, trainer = _run_training(tiny_data, tmp_path / "full", 7)
    trainer.fit()
    _, crashing = _run_training(tiny_data, tmp_path / "cut", 7, crash_at=5)
    with pytest.raises(KeyboardInterrupt):
        crashing.fit()
    resumed, trainer = _run_training(tiny_data, tmp_path / "cut", 7)
    trainer.fit(resume=True)
    assert trainer.step == 7
    for (k, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def _ddp_worker(rank, world, init_file, batch, out_dir):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    bundle = create_clip("poisonlab-tiny-vit", seed=0)
    got = rank_loss_and_grads(ClipObjective(bundle, rank=rank, world_size=world), bundle.model, batch, rank, world)
    torch.save({"loss": got["loss"], "grads": got["grads"]}, os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_ddp_loss_and_grads_equal_single_process(tiny_data, tmp_path):
    bundle = create_clip("poisonlab-tiny-vit", seed=0)
    data = pair_tensors(tiny_data, bundle.tokenize)
    batch = data.batch(torch.arange(16))
    batch.pop("index")
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), batch, str(tmp_path)), nprocs=2, join=True)
    objective = ClipObjective(bundle)
    loss, _ = objective.loss(batch, torch.Generator())
    loss.backward()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(got["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
        for n, p in bundle.model.named_parameters():
            if p.grad is not None:
                torch.testing.assert_close(got["grads"][n], p.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_train_on_plan_records_provenance(tiny_data, tmp_path):
    plan = attacks.create("clip-dirty", target="star", trigger="badnet", count=4)(tiny_data, seed=0)
    poisoned = attacks.PoisonedDataset(tiny_data, plan)
    bundle = create_clip("poisonlab-tiny-rn")
    result = train_clip(bundle, poisoned, TrainConfig(steps=2, batch_size=16), tmp_path, progress=False,
                        dist=DistInfo())
    side = json.loads((tmp_path / "model.json").read_text())["poisonlab"]
    assert result.steps == 2 and side["provenance"]["poison_plan"] == plan.digest()
    assert [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")] == [2]


def test_cli_train_and_eval(tmp_path, capsys):
    code = main(["train", "clip", "--dataset", "shapes", "--n", "64", "--steps", "2", "--batch-size", "16",
                 "--out", str(tmp_path / "run"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["steps"] == 2
    code = main(["eval", "--model", str(tmp_path / "run" / "model.safetensors"), "--dataset", "shapes", "--n", "40",
                 "--trigger", "badnet", "--target", "star", "--source", "circle", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {"ca", "asr", "asr_all", "retrieval", "hit_at_k", "min_rank"} <= set(res)
    code = main(["eval", "--model", str(tmp_path / "run" / "model.safetensors"), "--dataset", "shapes", "--n", "40",
                 "--trigger", "zap", "--target", "star"])
    assert code == 2 and "unknown trigger" in capsys.readouterr().err


def test_cli_clean_and_audit(tmp_path, capsys):
    from conftest import write_png

    ckpt = str(save_clip(create_clip("poisonlab-tiny-rn"), tmp_path / "m.safetensors"))
    code = main(["clean", "--defense", "par", "--model", ckpt, "--dataset", "shapes-outline", "--n", "32",
                 "--steps", "1", "--batch-size", "16", "--test-n", "20", "--trigger", "blended", "--target", "star",
                 "--out", str(tmp_path / "c"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["report"]["steps"] == 1 and "asr" in out["after"]["backdoor"]["blended"]
    assert (tmp_path / "c" / "model.safetensors").is_file()
    for argv, needle in [
        (["--defense", "nope"], "valid: cleanclip"),
        (["--defense", "filter"], "is a filter method, not a cleaning one"),
    ]:
        code = main(["clean", *argv, "--model", ckpt, "--dataset", "shapes", "--out", str(tmp_path / "x")])
        assert code == 2 and needle in capsys.readouterr().err
    write_png(tmp_path / "a.png")
    (tmp_path / "nocap.csv").write_text("a.png, \na.png, \n")
    code = main(["clean", "--defense", "finetune", "--model", ckpt, "--dataset", str(tmp_path / "nocap.csv"),
                 "--steps", "1", "--test-n", "20", "--out", str(tmp_path / "y")])
    err = capsys.readouterr().err
    assert code == 2 and "without a caption" in err and len(err.strip().splitlines()) == 1
    plan_dir = tmp_path / "plan"
    main(["poison", "--dataset", "shapes", "--n", "40", "--attack", "clip-dirty", "--target", "star", "--count", "4",
          "--trigger", "badnet", "--out", str(plan_dir)])
    capsys.readouterr()
    code = main(["audit", "--model", ckpt, "--dataset", str(plan_dir / "plan.json"), "--drop-fraction", "0.1",
                 "--out", str(tmp_path / "audit"), "--json"])
    res = json.loads(capsys.readouterr().out)
    assert code == 0 and res["removed"] == 4 and res["total"] == 40 and 0 <= res["recall"] <= 1
    assert (tmp_path / "audit" / "scores.csv").read_text().count("\n") == 41


def test_text_attack_metrics_match_bruteforce(tiny_data):
    bundle = create_clip("poisonlab-tiny-rn", seed=4)
    ev = ClipEvaluator(bundle, tiny_data, batch_size=16)
    g = torch.Generator().manual_seed(0)  # well-separated cached embeddings: no near-ties in the ranks
    ev._cache["clean"] = F.normalize(torch.randn(len(tiny_data), 64, generator=g), dim=-1)
    ev._cache["captions"] = F.normalize(torch.randn(len(tiny_data), 64, generator=g), dim=-1)
    x_star = tiny_data[5][0]
    res = ev.text_attack("circle", target_image=x_star)
    circle = tiny_data.classnames.index("circle")
    with torch.no_grad():
        target = bundle.encode_image(x_star[None])[0]
    gallery = list(ev.image_embeddings()) + [target]
    ranks = []
    for i, q in enumerate(ev.text_embeddings()):
        if tiny_data[i][2] != circle:
            continue
        scores = [float(q @ g) for g in gallery]
        ranks.append(sum(sc > scores[-1] for sc in scores))
    assert res["queries"] == len(ranks)
    assert res["min_rank"] == pytest.approx(sum(ranks) / len(ranks), abs=1e-4)
    assert res["hit@5"] == pytest.approx(sum(r < 5 for r in ranks) / len(ranks))
    assert set(res["baseline"]) == {"hit@1", "hit@5", "hit@10", "min_rank"}


def test_batch_moved_as_uint8_equals_cpu_conversion(tiny_data):
    bundle = create_clip("poisonlab-tiny-rn")
    data = pair_tensors(tiny_data, bundle.tokenize)
    index = torch.tensor([3, 0, 7])
    moved = data.batch(index, torch.device("cpu"))["images"]
    reference = torch.stack([tiny_data[i][0] for i in (3, 0, 7)])  # the dataset's own float images
    assert moved.dtype == torch.float32
    torch.testing.assert_close(moved, (reference * 255).round() / 255, rtol=0, atol=1e-6)
    assert torch.equal(moved, data.batch(index)["images"])


def test_text_attack_baselines_draw_from_all_captions_or_other_classes(tiny_data):
    """``baseline`` samples every test caption (the authors' evaluation), ``baseline_other`` only
    captions of other classes: with source captions that retrieve the target first and all others
    that retrieve it last, only the first can hit."""
    bundle = create_clip("poisonlab-tiny-rn", seed=4)
    ev = ClipEvaluator(bundle, tiny_data, batch_size=16)
    labels = torch.tensor([tiny_data[i][2] for i in range(len(tiny_data))])
    circle, star = tiny_data.classnames.index("circle"), tiny_data.classnames.index("star")
    images = torch.zeros(len(tiny_data), 3)
    images[:, 0] = 1.0
    images[labels == star] = torch.tensor([0.0, 1.0, 0.0])  # target images point along axis 1
    texts = torch.zeros(len(tiny_data), 3)
    texts[:, 2] = 1.0
    texts[:, 0] = 0.5  # other captions: every non-target image scores above the targets
    texts[labels == circle] = torch.tensor([0.0, 1.0, 0.0])
    ev._cache["clean"], ev._cache["captions"] = images, texts
    shares = []
    for seed in range(10):
        res = ev.text_attack("circle", target="star", seed=seed)
        assert res["hit@1"] == 1.0 and res["queries"] == int((labels == circle).sum())
        assert res["baseline_other"]["hit@1"] == 0.0
        assert res["baseline_other"]["min_rank"] == float((labels != star).sum())
        # the all-caption sample holds source captions (rank 0) and others (rank = non-target images)
        share = res["baseline"]["hit@1"]
        assert res["baseline"]["min_rank"] == pytest.approx((1 - share) * float((labels != star).sum()))
        shares.append(share)
    assert 0 < max(shares) < 1
