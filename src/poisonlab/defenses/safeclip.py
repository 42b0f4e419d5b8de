"""SafeCLIP: pre-train CLIP on untrusted pairs, giving the CLIP loss only to pairs that look safe.

Paper: Yang, Gao & Mirzasoleiman, "Better Safe than Sorry: Pre-training CLIP against Targeted Data
Poisoning and Backdoor Attacks", ICML 2024 (arXiv:2310.05862); code BigML-CS-UCLA/SafeCLIP.

Threat model: the defender pre-trains on web pairs of which a few are poisoned. Poisoned pairs
match an image to a caption of another concept, so after a short unimodal warm-up their
image-caption cosine is low: the defense trains on what the two modalities agree on.

Schedule (epochs of the run):

1. ``unimodal_epochs`` (5) of the unimodal loss on every pair: each augmented image (AutoAugment)
   against the nearest neighbour of its original in a memory bank of past image embeddings (256),
   and the same for captions (EDA) — ``[CE(s·Ĩ·NN(I)ᵀ) + CE(s·T̃·NN(T)ᵀ)] / 2`` (NNCLR's bank,
   lightly's ``NNMemoryBankModule``);
2. ``clip_epochs`` (1) of the CLIP loss on every pair at the low rate ``clip_lr`` (5e-6);
3. then, before each epoch, the cosine of every pair with the current model, a 2-component
   Gaussian mixture on the cosines (scikit-learn, ``random_state=0`` as the authors), and
   ``p`` = posterior of the component with the larger mean. The first split marks safe the pairs
   with ``p > p_safe`` (0.9); every later one the top share by ``p``, the share growing by
   ``share_step`` (0.01) per epoch up to ``max_share`` (0.85). Safe pairs get the CLIP loss with
   the other view of each modality (image vs augmented caption, caption vs augmented image), risky
   pairs the unimodal loss.

Where this differs from the released code, and why:

- The released trainer runs two loaders per epoch (risky pairs in-modal, then safe pairs
  cross-modal). Here every batch of the run's seeded order holds both: safe items get the CLIP
  loss among the batch's safe items, risky items the unimodal loss, each term weighted by its
  share of the batch, so an epoch is one pass over the data as in every other poisonlab run (and
  resumes exactly: the split, banks and share are buffers saved with the training state).
- One learning-rate schedule for the run (the loop's warm-up + cosine); the CLIP warm-up epoch
  runs at ``clip_lr`` as in the paper. The released code restarts a cosine after the warm-up.
- The released parser leaves the memory bank off unless ``--memory_bank`` is passed; its README
  passes it, so the bank is on here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightly.models.modules import NNMemoryBankModule
from open_clip.loss import gather_features
from sklearn.mixture import GaussianMixture
from torch import nn

from poisonlab.augment.eda import DEFAULT_WORDNET, EDA
from poisonlab.augment.image import IMAGE_VIEWS, image_views
from poisonlab.defenses.base import DEFENSES, TrainingDefense
from poisonlab.errors import InputError
from poisonlab.models.clip import ClipBundle
from poisonlab.train.dist import DistInfo
from poisonlab.train.loop import Objective, TrainConfig
from poisonlab.train.objectives.clip import ClipObjective, PairViews
from poisonlab.train.stream import sequential
from poisonlab.utils.seeding import derive_seed

log = logging.getLogger(__name__)


class NearestNeighbourBank(NNMemoryBankModule):
    """lightly's NNCLR memory bank with its contents saved in ``state_dict`` (a resumed run
    continues with the same bank), filled at first from a seeded random start."""

    def __init__(self, size: int, dim: int, seed: int) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            super().__init__(size=(size, dim))
        self.register_buffer("bank", self.bank, persistent=True)
        self.register_buffer("bank_ptr", self.bank_ptr, persistent=True)


def unimodal_loss(views: torch.Tensor, neighbours: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``CE(s · views · neighboursᵀ)`` with the i-th row's positive at column i (one modality)."""
    labels = torch.arange(views.shape[0], device=views.device)
    return F.cross_entropy(scale * views @ neighbours.T, labels)


def cross_view_clip_loss(image: torch.Tensor, text: torch.Tensor, image_aug: torch.Tensor, text_aug: torch.Tensor,
                         scale: torch.Tensor) -> torch.Tensor:
    """SafeCLIP's CLIP loss with augmented partners: ``[CE(s·I·T̃ᵀ) + CE(s·T·Ĩᵀ)] / 2``."""
    labels = torch.arange(image.shape[0], device=image.device)
    return (F.cross_entropy(scale * image @ text_aug.T, labels) + F.cross_entropy(scale * text @ image_aug.T, labels)) / 2


def clean_probability(cosines: np.ndarray) -> np.ndarray:
    """Posterior of the higher-mean component of a 2-component Gaussian mixture on ``cosines``
    (scikit-learn, ``random_state=0`` as the authors)."""
    x = np.asarray(cosines, dtype=np.float64).reshape(-1, 1)
    gmm = GaussianMixture(n_components=2, random_state=0).fit(x)
    return gmm.predict_proba(x)[:, int(np.argmax(gmm.means_.ravel()))]


def safe_split(p: np.ndarray, share: float | None, p_safe: float) -> tuple[np.ndarray, float]:
    """The safe items and the share they make: ``p > p_safe`` when ``share`` is ``None`` (the first
    split), else the ``round(share · N)`` items of highest ``p`` (ties: lower index first)."""
    if share is None:
        safe = p > p_safe
        return safe, float(safe.mean())
    order = np.argsort(-p, kind="stable")
    safe = np.zeros(len(p), dtype=bool)
    safe[order[: int(round(share * len(p)))]] = True
    return safe, share


def next_share(share: float, step: float, cap: float) -> float:
    """The safe share of the next epoch: ``min(share + step, cap)`` (the authors' schedule)."""
    return min(share + step, cap)


@torch.no_grad()
def pair_cosines(bundle: ClipBundle, data: Any, device: torch.device, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Every pair's image-caption cosine with the model in eval mode, unaugmented (the split's
    input), and which pairs a poison plan changed (all ``False`` when the data does not say).
    An item the stream skipped as unreadable gets the lowest cosine (risky)."""
    n = len(data)
    cosines, poisoned = np.full(n, np.nan), np.zeros(n, dtype=bool)
    model = bundle.model
    was_training = model.training
    model.eval()
    try:
        for batch in data.batches(sequential(n, batch_size), device):
            out = model(bundle.normalize(batch["images"]), batch["tokens"].to(device))
            index = batch["index"].cpu().numpy()
            cosines[index] = (out["image_features"] * out["text_features"]).sum(-1).float().cpu().numpy()
            if "poisoned" in batch:
                poisoned[index] = batch["poisoned"].cpu().numpy()
    finally:
        model.train(was_training)
    missing = np.isnan(cosines)
    if missing.all():
        raise InputError("SafeCLIP could not read any pair of the data to split it")
    cosines[missing] = np.nanmin(cosines)
    return cosines, poisoned


def split_record(epoch: int, safe: np.ndarray, poisoned: np.ndarray) -> dict[str, Any]:
    """One split as the report keeps it: the safe share and, when the data says which pairs are
    poisoned, the risky set's precision and recall against them."""
    risky = ~safe
    record: dict[str, Any] = {"epoch": epoch, "safe_share": round(float(safe.mean()), 6), "risky": int(risky.sum())}
    if poisoned.any():
        caught = int((risky & poisoned).sum())
        record.update(poisoned=int(poisoned.sum()), caught=caught, recall=caught / int(poisoned.sum()),
                      precision=caught / int(risky.sum()) if risky.any() else 0.0)
    return record


class SafeClipNet(nn.Module):
    """The CLIP model and SafeCLIP's state, one module so that DDP and the training state hold
    both: the two memory banks, which items are safe, the last split's epoch and share."""

    def __init__(self, clip: nn.Module, dim: int, bank_size: int, seed: int) -> None:
        super().__init__()
        self.clip = clip
        self.image_bank = NearestNeighbourBank(bank_size, dim, derive_seed("safeclip-image-bank", seed))
        self.text_bank = NearestNeighbourBank(bank_size, dim, derive_seed("safeclip-text-bank", seed))
        self.register_buffer("safe", torch.zeros(0, dtype=torch.bool))
        self.register_buffer("split_epoch", torch.tensor(-1))
        self.register_buffer("share", torch.tensor(-1.0, dtype=torch.float64))

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.clip(images, tokens)


class SafeClipObjective(ClipObjective):
    """SafeCLIP's three phases over the loop's epochs (see the module docstring)."""

    def __init__(self, bundle: ClipBundle, defense: SafeCLIP, seed: int = 0, rank: int = 0, world_size: int = 1,
                 image_augment: Any = None, text_augment: Any = None) -> None:
        super().__init__(bundle, rank, world_size)
        self.defense = defense
        self.net = SafeClipNet(bundle.model, int(bundle.config["embed_dim"]), defense.bank_size, seed).to(bundle.device)
        self.model = self.net
        self.rank, self.world_size = rank, world_size
        self.views = PairViews(bundle.tokenize, image_augment or image_views(defense.views, bundle.image_size),
                               text_augment or EDA(defense.eda_alpha, defense.wordnet))
        self.steps_per_epoch, self.epoch = 1, 0
        self.splits: list[dict[str, Any]] = []

    # -- phases ---------------------------------------------------------------------------
    def prepare(self, items: int, steps_per_epoch: int, total_steps: int) -> None:
        d = self.defense
        warmup = d.unimodal_epochs + d.clip_epochs
        if warmup * steps_per_epoch >= total_steps:
            raise InputError(f"SafeCLIP's warm-up ({d.unimodal_epochs} unimodal + {d.clip_epochs} CLIP epochs) is as "
                             f"long as the run ({total_steps / steps_per_epoch:g} epochs): nothing would be split; "
                             "train longer or shorten the warm-up")
        if d.bank_size > items:
            raise InputError(f"SafeCLIP's memory bank ({d.bank_size}) is larger than the data ({items} pairs)")
        self.steps_per_epoch = steps_per_epoch
        if self.net.safe.numel() != items:
            self.net.safe = torch.zeros(items, dtype=torch.bool, device=self.net.safe.device)

    def phase(self, epoch: int) -> str:
        """``unimodal``, ``clip`` (the low-rate CLIP warm-up) or ``split``."""
        d = self.defense
        return "unimodal" if epoch < d.unimodal_epochs else "clip" if epoch < d.unimodal_epochs + d.clip_epochs \
            else "split"

    def learning_rate(self, step: int, lr: float) -> float:
        return self.defense.clip_lr if self.phase(step // self.steps_per_epoch) == "clip" else lr

    @torch.no_grad()
    def start_epoch(self, epoch: int, data: Any, device: torch.device) -> None:
        """Split the pairs into safe and risky before each epoch of the last phase (once per epoch:
        a resumed run keeps the split it saved)."""
        self.epoch = epoch
        if self.phase(epoch) != "split" or int(self.net.split_epoch) == epoch:
            return
        cosines, poisoned = pair_cosines(self.bundle, data, device)
        p = clean_probability(cosines)
        previous = float(self.net.share)
        share = None if previous < 0 else next_share(previous, self.defense.share_step, self.defense.max_share)
        safe, share = safe_split(p, share, self.defense.p_safe)
        self.net.safe = torch.as_tensor(safe, device=self.net.safe.device)
        self.net.split_epoch.fill_(epoch)
        self.net.share.fill_(share)
        self.splits.append(split_record(epoch, safe, poisoned))
        log.info("SafeCLIP epoch %d: %.1f%% of the pairs safe", epoch, 100 * share)

    # -- losses ---------------------------------------------------------------------------
    def loss(self, batch: dict[str, Any], generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        aug_images, aug_tokens = self.views(batch, generator)
        b = batch["images"].shape[0]
        out = self.model(self.bundle.normalize(torch.cat([batch["images"], aug_images])),
                         torch.cat([batch["tokens"], aug_tokens]))
        feats = [out["image_features"][:b], out["text_features"][:b], out["image_features"][b:],
                 out["text_features"][b:]]
        safe = self._safe(batch, b)
        if self.world_size > 1:
            feats[0], feats[1] = gather_features(feats[0], feats[1], gather_with_grad=True, rank=self.rank,
                                                 world_size=self.world_size)
            feats[2], feats[3] = gather_features(feats[2], feats[3], gather_with_grad=True, rank=self.rank,
                                                 world_size=self.world_size)
            gathered = [torch.zeros_like(safe, dtype=torch.uint8) for _ in range(self.world_size)]
            torch.distributed.all_gather(gathered, safe.to(torch.uint8))  # gloo has no bool
            safe = torch.cat(gathered).bool()
        image, text, image_aug, text_aug = feats
        scale = out["logit_scale"]
        n = image.shape[0]
        loss, extra = image.new_zeros(()), {"safe_share": float(safe.float().mean())}
        if safe.sum() >= 2:
            l_clip = cross_view_clip_loss(image[safe], text[safe], image_aug[safe], text_aug[safe], scale)
            loss = loss + l_clip * safe.sum() / n
            extra["l_clip"] = float(l_clip.detach())
        risky = ~safe
        if risky.sum() >= 2:
            l_uni = self._unimodal(image[risky], text[risky], image_aug[risky], text_aug[risky], scale)
            loss = loss + l_uni * risky.sum() / n
            extra["l_unimodal"] = float(l_uni.detach())
        return loss, extra

    def _safe(self, batch: dict[str, Any], b: int) -> torch.Tensor:
        """Which items of the batch get the CLIP loss: none in the unimodal warm-up, all in the CLIP
        warm-up, the split's safe ones after it."""
        device = batch["images"].device
        phase = self.phase(self.epoch)
        if phase != "split":
            return torch.full((b,), phase == "clip", dtype=torch.bool, device=device)
        return self.net.safe[batch["index"].to(self.net.safe.device)].to(device)

    def _unimodal(self, image: torch.Tensor, text: torch.Tensor, image_aug: torch.Tensor, text_aug: torch.Tensor,
                  scale: torch.Tensor) -> torch.Tensor:
        """The two unimodal terms against the banks' nearest neighbours; the banks then take the
        originals' embeddings (lightly's ``update=True``: looked up first, then enqueued)."""
        image_nn = self.net.image_bank(image.detach(), update=True)
        text_nn = self.net.text_bank(text.detach(), update=True)
        return (unimodal_loss(image_aug, image_nn, scale) + unimodal_loss(text_aug, text_nn, scale)) / 2

    def summary(self) -> dict[str, Any]:
        """The split of every epoch this run made (share, precision and recall of the risky set)."""
        return {"splits": self.splits}


@DEFENSES.register("safeclip")
@dataclass(frozen=True)
class SafeCLIP(TrainingDefense):
    """SafeCLIP (see the module docstring); the authors' defaults.

    Args:
        unimodal_epochs: epochs of the unimodal warm-up (5).
        clip_epochs: epochs of CLIP loss on every pair at ``clip_lr`` before the first split (1).
        clip_lr: learning rate of those epochs (5e-6).
        bank_size: entries of each nearest-neighbour memory bank (256).
        p_safe: posterior above which the first split calls a pair safe (0.9).
        share_step: growth of the safe share per epoch (0.01).
        max_share: largest safe share (0.85).
        views: the images' second view, ``autoaugment`` (the paper's) or ``crop-flip``.
        eda_alpha: share of words each EDA operation changes (0.1).
        wordnet: folder of the WordNet data files used for synonyms.
    """

    unimodal_epochs: int = 5
    clip_epochs: int = 1
    clip_lr: float = 5e-6
    bank_size: int = 256
    p_safe: float = 0.9
    share_step: float = 0.01
    max_share: float = 0.85
    views: str = "autoaugment"
    eda_alpha: float = 0.1
    wordnet: str = str(DEFAULT_WORDNET)

    def __post_init__(self) -> None:
        if not 0 < self.max_share <= 1:
            raise InputError(f"SafeCLIP's safe share must be in (0, 1], got max_share={self.max_share}")
        if not 0 <= self.share_step <= 1 or not 0 < self.p_safe < 1:
            raise InputError(f"share_step must be in [0, 1] and p_safe in (0, 1), got {self.share_step}, {self.p_safe}")
        if self.views not in IMAGE_VIEWS:
            raise InputError(f"unknown views {self.views!r}; valid: {', '.join(IMAGE_VIEWS)}")
        if self.unimodal_epochs < 0 or self.clip_epochs < 0 or self.bank_size < 1 or self.clip_lr < 0:
            raise InputError("unimodal_epochs and clip_epochs must be >= 0, bank_size >= 1 and clip_lr >= 0")

    def recipe(self) -> TrainConfig:
        """The paper's budget: 32 epochs, batch 128, lr 5e-4, weight decay 0.1, 10,000 warm-up steps."""
        return TrainConfig(epochs=32, batch_size=128, lr=5e-4, weight_decay=0.1, warmup=10_000)

    def objective(self, bundle: ClipBundle, dist: DistInfo, seed: int) -> Objective:
        return SafeClipObjective(bundle, self, seed, dist.rank, dist.world_size)
