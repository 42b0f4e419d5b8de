"""Knowledge distillation of a poisoned encoder into a clean student (CompRess).

Papers: Abbasi Koohpayegani et al., "CompRess: Self-Supervised Learning by Compressing
Representations", NeurIPS 2020; used as the backdoor defense by Saha et al., "Backdoor Attacks on
Self-Supervised Learning", CVPR 2022 (the student only sees a clean unlabeled subset, so it
inherits the teacher's features but not the patch -> target shortcut).

Teacher (frozen) and student embed the same augmented view; both embeddings are L2-normalised.
Each side keeps a FIFO memory bank of its own past embeddings of the same images (lightly's
``MemoryBankModule``). With similarities to the bank divided by ``T = 0.04``:

    L = KL( softmax(t . B_t / T) || softmax(s . B_s / T) )

and both banks are then updated with the batch.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from lightly.models.modules.memory_bank import MemoryBankModule
from torch import nn

from poisonlab.augment.image import BatchViews
from poisonlab.data.base import ImageCaptionDataset
from poisonlab.defenses.base import DEFENSES, Defended, RunOptions
from poisonlab.models.classifier import ClassifierBundle, create_encoder
from poisonlab.train.data import LabelTensors, label_tensors
from poisonlab.train.loop import Objective, TrainConfig, Trainer
from poisonlab.train.objectives.ssl import _Encoder
from poisonlab.utils.seeding import derive_seed


def compress_loss(teacher: torch.Tensor, student: torch.Tensor, bank_teacher: torch.Tensor,
                  bank_student: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher's bank distribution || student's), batch mean; inputs unit-normalised, banks ``[K, D]``."""
    log_p_t = F.log_softmax(teacher @ bank_teacher.T / temperature, dim=1)
    log_p_s = F.log_softmax(student @ bank_student.T / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)


class _DistillNet(nn.Module):
    def __init__(self, teacher: ClassifierBundle, student: ClassifierBundle, bank_size: int) -> None:
        super().__init__()
        self.teacher, self.student = _Encoder(teacher), _Encoder(student)
        self.teacher.requires_grad_(False)
        dim_t, dim_s = teacher.model.num_features, student.model.num_features
        self.bank_teacher = MemoryBankModule((bank_size, dim_t), feature_dim_first=False)
        self.bank_student = MemoryBankModule((bank_size, dim_s), feature_dim_first=False)

    def train(self, mode: bool = True) -> _DistillNet:
        super().train(mode)
        self.teacher.eval()  # the teacher is frozen, batch norm included
        return self

    def forward(self, x: torch.Tensor, temperature: float) -> torch.Tensor:
        with torch.no_grad():
            t = F.normalize(self.teacher(x), dim=1)
        s = F.normalize(self.student(x), dim=1)
        _, bank_t = self.bank_teacher(t, update=True)
        _, bank_s = self.bank_student(s.detach(), update=True)
        return compress_loss(t, s, bank_t, bank_s, temperature)


class DistillObjective(Objective):
    def __init__(self, teacher: ClassifierBundle, student: ClassifierBundle, bank_size: int, temperature: float, seed: int = 0) -> None:
        with torch.random.fork_rng(devices=[]):  # the banks' random start comes from the seed
            torch.manual_seed(derive_seed("distill-banks", seed))
            self.model = _DistillNet(teacher, student, bank_size)
        self.views = BatchViews(student.image_size)
        self.temperature = temperature

    def loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        return self.model(self.views.view(batch["images"], generator), self.temperature), {}


@DEFENSES.register("distill")
@dataclass(frozen=True)
class Distill:
    """CompRess distillation into a fresh student of the teacher's architecture (or ``student_arch``)."""

    family: ClassVar[str] = "encoder"
    kind: ClassVar[str] = "cleaning"

    epochs: float = 20.0
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup: int = 20
    bank_size: int = 2048
    temperature: float = 0.04
    student_arch: str | None = None
    seed: int = 0

    def run(self, suspect: ClassifierBundle, data: ImageCaptionDataset | LabelTensors, *,
            out: str | Path | None = None, options: RunOptions | None = None) -> Defended:
        """Train a student on the clean unlabeled images ``data`` (labels are never read) with the
        suspect as teacher; with ``out``, the student is written to ``out/model.safetensors``."""
        clean = data if isinstance(data, LabelTensors) else label_tensors(data, suspect.image_size)
        teacher = suspect
        student = create_encoder(self.student_arch or teacher.name, teacher.image_size, seed=self.seed)
        teacher = copy.copy(teacher)
        objective = DistillObjective(teacher, student, self.bank_size, self.temperature, self.seed)
        cfg = TrainConfig(epochs=self.epochs, batch_size=min(self.batch_size, len(clean)), lr=self.lr,
                          weight_decay=self.weight_decay, warmup=self.warmup, seed=self.seed)
        result = Trainer(objective, clean, cfg, progress=False).fit()
        student.model.eval()
        student.provenance = {"stage": "distill", "teacher": teacher.provenance, "params": asdict(self)}
        if out is not None:
            student.save(Path(out) / "model.safetensors")
        return Defended(student, {"defense": "distill", "params": asdict(self), "steps": result.steps,
                                  "seconds": round(result.seconds, 2), "images": len(clean)})
