"""Evaluate a CLIP model on a test split with every backdoor metric, computing each embedding once.

:class:`ClipEvaluator` caches, per model and test split: the zero-shot class weights, the clean
image embeddings and the caption embeddings. A triggered evaluation then costs one pass over the
triggered images only, so five triggers cost five passes, not ten.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from open_clip.transform import PreprocessCfg, image_transform_v2

from poisonlab.data.base import ImageCaptionDataset, ReadAs, read_as
from poisonlab.errors import InputError
from poisonlab.metrics.classification import accuracy, attack_success_rate
from poisonlab.metrics.retrieval import hit_and_min_rank, recall_at_k
from poisonlab.metrics.zero_shot import zero_shot_predict, zero_shot_weights
from poisonlab.models.clip import ClipBundle
from poisonlab.models.finite import check_outputs
from poisonlab.train.stream import DataConfig, open_items, sequential
from poisonlab.triggers import Trigger
from poisonlab.utils.seeding import make_generator

log = logging.getLogger(__name__)


def model_preprocess(bundle: ClipBundle) -> ReadAs:
    """The model's own open_clip preprocess for evaluation (its ``preprocess_cfg``: resize mode and
    interpolation, bicubic by default; centre crop) without the normalisation, which the bundle
    applies: the images clip_benchmark and the papers feed the model."""
    cfg = dict(getattr(bundle.model.visual, "preprocess_cfg", None) or {})
    cfg.update(size=bundle.image_size, mode="RGB", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return ReadAs(bundle.image_size, image_transform_v2(PreprocessCfg(**cfg), is_train=False))


class ClipEvaluator:
    """All metrics of one model on one labelled, captioned test split.

    The test images are read as the model's open_clip preprocess reads them (:func:`model_preprocess`,
    set on ``dataset`` with :func:`~poisonlab.data.base.read_as`), so CA on off-size images equals
    clip_benchmark's.

    Args:
        bundle: the model.
        dataset: the clean test split (needs ``classnames`` for CA/ASR).
        batch_size: images per forward pass.
        data_config: test images held in memory or streamed through DataLoader workers, one
            pass per trigger (default ``auto``). Every image must be readable.
        skip_target: triggered passes read only the images whose class is not the target (the
            CleanCLIP protocol: ImageNet val minus the target class), so those are never decoded;
            ``backdoor`` then reports ``asr`` without ``asr_all``.
    """

    def __init__(self, bundle: ClipBundle, dataset: ImageCaptionDataset, batch_size: int = 256,
                 data_config: DataConfig | None = None, skip_target: bool = False) -> None:
        self.bundle, self.dataset, self.batch_size = bundle, dataset, batch_size
        self.skip_target = skip_target
        cfg = data_config or DataConfig()
        if cfg.skip_bad_images:
            raise InputError("evaluation needs every test image: --skip-bad-images is for training data")
        read_as(dataset, model_preprocess(bundle))
        self.source = open_items(dataset, bundle.image_size, None, cfg)
        self.labels = torch.tensor(dataset.labels(), dtype=torch.long)
        self._cache: dict[str, torch.Tensor] = {}
        self.passes = 0

    @torch.no_grad()
    def _embed_images(self, trigger: Trigger | None, seed: int, index: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings of all images (or those at ``index``, in order), triggered if given."""
        self.bundle.model.eval()
        g = make_generator("eval-trigger", seed)
        out = []
        chunks = sequential(len(self.source), self.batch_size) if index is None else list(index.split(self.batch_size))
        for batch in self.source.batches(chunks):
            x = batch["images"]
            if trigger is not None:
                x = trigger(x, generator=g)
            out.append(self.bundle.encode_image(x).float().cpu())
        self.passes += 1
        return check_outputs(torch.cat(out), "image embeddings")

    def image_embeddings(self, trigger: Trigger | None = None, seed: int = 0, without: int | None = None) -> torch.Tensor:
        """Embeddings of every test image (``without``: of those whose class is not ``without``),
        computed once per trigger and seed."""
        key = ("clean" if trigger is None else f"{trigger!r}/{seed}") + ("" if without is None else f"/without-{without}")
        if key not in self._cache:
            index = None if without is None else (self.labels != without).nonzero().flatten()
            self._cache[key] = self._embed_images(trigger, seed, index)
        return self._cache[key]

    @torch.no_grad()
    def text_embeddings(self) -> torch.Tensor:
        if "captions" not in self._cache:
            self.bundle.model.eval()
            caps = self.dataset.captions()
            embs = [self.bundle.encode_text(self.bundle.tokenize(caps[i : i + 512])).float().cpu()
                    for i in range(0, len(caps), 512)]
            self._cache["captions"] = check_outputs(torch.cat(embs), "text embeddings")
        return self._cache["captions"]

    def class_weights(self) -> torch.Tensor:
        if not self.dataset.classnames:
            raise InputError("zero-shot accuracy needs a test set with class names")
        if "classes" not in self._cache:
            self._cache["classes"] = zero_shot_weights(self.bundle, self.dataset.classnames, self.dataset.templates)
        return self._cache["classes"]

    def target_index(self, target: str) -> int:
        names = self.dataset.classnames or []
        if target not in names:
            raise InputError(f"target class {target!r} is not in the test set; valid: {', '.join(names)}")
        return names.index(target)

    # -- metrics -----------------------------------------------------------------------------
    def clean_accuracy(self) -> float:
        return accuracy(zero_shot_predict(self.image_embeddings(), self.class_weights()), self.labels)

    def backdoor(self, trigger: Trigger, target: str, seed: int = 0) -> dict[str, float]:
        """``asr`` and ``ra`` (non-target images only) and ``asr_all`` of ``trigger`` toward ``target``
        (no ``asr_all``, and the images left out, when the evaluator skips the target class)."""
        t = self.target_index(target)
        if not self.skip_target:
            preds = zero_shot_predict(self.image_embeddings(trigger, seed), self.class_weights())
            return attack_success_rate(preds, self.labels, t)
        preds = zero_shot_predict(self.image_embeddings(trigger, seed, without=t), self.class_weights())
        return {"asr": float((preds == t).double().mean()) if len(preds) else float("nan"),
                "ra": accuracy(preds, self.labels[self.labels != t]),
                "target_images_skipped": len(self.labels) - len(preds)}

    def retrieval(self) -> dict[str, float]:
        return recall_at_k(self.image_embeddings(), self.text_embeddings(), captions=self.dataset.captions())

    def text_attack(self, source: str, target: str | None = None, target_image: torch.Tensor | None = None,
                    seed: int = 0) -> dict[str, Any]:
        """Hit@K / MinRank of source-class test captions toward a target class or one image.

        The gallery is every test image (plus ``target_image`` for Attack I). Two baselines run the
        same numbers for as many random captions: ``baseline`` draws them from all test captions,
        without replacement, as the authors' evaluation does (mm_poison,
        ``poisoning/attack_eval_pipeline.py``); ``baseline_other`` only from captions of other classes
        than the source.
        """
        if (target is None) == (target_image is None):
            raise InputError("give a target class or a target image")
        src = self.target_index(source)
        gallery = self.image_embeddings()
        if target_image is not None:
            x = target_image[None].float().to(self.bundle.device)
            self.bundle.model.eval()
            with torch.no_grad():
                extra = self.bundle.encode_image(x).float().cpu()
            gallery = torch.cat([gallery, extra])
            mask = torch.zeros(len(gallery), dtype=torch.bool)
            mask[-1] = True
        else:
            mask = self.labels == self.target_index(target)
        texts = self.text_embeddings()
        queries = (self.labels == src).nonzero().flatten()
        if len(queries) == 0:
            raise InputError(f"no test captions of class {source!r}")
        others = (self.labels != src).nonzero().flatten()
        g = make_generator("baseline", seed)
        anyone = torch.randperm(len(texts), generator=g)[: len(queries)]
        other = others[torch.randperm(len(others), generator=g)[: len(queries)]]
        result: dict[str, Any] = hit_and_min_rank(texts[queries] @ gallery.T, mask)
        result["baseline"] = hit_and_min_rank(texts[anyone] @ gallery.T, mask)
        result["baseline_other"] = hit_and_min_rank(texts[other] @ gallery.T, mask)
        result["queries"] = len(queries)
        return result
