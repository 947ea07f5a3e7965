"""Twin training on priors (the k-means-prior seed work), and fine-tuning of a twin to real classes.

A segmentation network learns to predict an unsupervised prior mask M (40 global k-means clusters
by default) from the image. In twin mode a student and a teacher see two augmentations x1, x2 of
one image that share M; the loss is

    seg(student(x1), M1) + seg(teacher(x2), M2) + w * consistency(student(x1), teacher(x2)),

M1 / M2 being M under each view's geometry and the consistency computed on the pixels both views
cover (`usgs.methods.twin_views.align_views`). Validation maps the K predicted clusters to the
dataset's classes (Hungarian when K = classes, majority vote when K > classes).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Literal

import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn

from usgs.methods.base import OptimizerFactory, SegmentationModule, split_backbone_params
from usgs.methods.ema import cosine_momentum_schedule, ema_update
from usgs.methods.supervised import SupervisedSegmentation
from usgs.methods.twin_views import SECOND_VIEW_SUFFIX, align_views
from usgs.nets.weights import read_state_dict

TeacherMode = Literal["none", "mutual", "ema", "ema_epoch"]
TEACHER_MODES: tuple[str, ...] = ("none", "mutual", "ema", "ema_epoch")


def seed_epoch_momentum(epoch: int, low: float, high: float, period: int) -> float:
    """The seed's once-per-epoch teacher momentum: ``low + (high - low) (1 + cos(pi epoch / period)) / 2``.

    Note the direction: it starts at ``high`` (0.999) and falls to ``low`` (0.9) after ``period``
    epochs (the seed's ``eta_max``, ``eta_min``, ``T_max``), the reverse of DINO's rising schedule.
    """
    return low + 0.5 * (high - low) * (1.0 + math.cos(math.pi * epoch / period))


class Twins(SegmentationModule):
    """Student (and teacher) segmentation networks trained on a prior mask.

    Batch: ``image`` [B,3,h,w] and ``<target_key>`` int64 [B,h,w] (255 = ignore); twin modes also
    need ``image2``, ``<target_key>2`` and ``geometry`` [B,2,5] from `usgs.methods.twin_views.TwinViews`.

    Args:
        net: the student, ``[B,3,h,w] -> logits [B,K,h,w]``; K = ``num_predictions`` (prior clusters).
        num_classes: the dataset's classes (validation against the ground truth).
        loss: mask loss ``(logits, target) -> scalar`` (`usgs.methods.losses`; the seed used Dice).
        consistency: element-wise loss with ``reduction="none"`` (``torch.nn.MSELoss`` or ``L1Loss``).
        teacher_net: the teacher's network (independently initialised); None = a copy of ``net``.
        teacher_mode: ``none`` (single network on the prior, no teacher), ``mutual`` (both trained),
            ``ema`` (teacher = EMA of the student every step on DINO's cosine schedule
            ``momentum`` -> ``final_momentum``), ``ema_epoch`` (the seed's per-epoch EMA, see
            `seed_epoch_momentum`).
        teacher_copies_student: whether an EMA teacher starts as a copy of the student. None = per
            mode: ``ema`` copies (DINO), ``ema_epoch`` keeps ``teacher_net``'s own initialisation
            (the seed's main_twins.py builds the teacher as a second, independent network and only
            ever moves it by the per-epoch EMA).
        consistency_weight: w; the seed's default 1.
        backbone_lr_scale: the seed trains the backbones at lr / 10 with Adam.
        target_key: batch key of the mask to predict (``prior``; tests may use ``mask``).
    """

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        loss: nn.Module,
        consistency: nn.Module,
        optimizer: OptimizerFactory | None = None,
        teacher_net: nn.Module | None = None,
        teacher_mode: TeacherMode = "mutual",
        consistency_weight: float = 1.0,
        momentum: float = 0.996,
        final_momentum: float = 1.0,
        epoch_momentum: tuple[float, float] = (0.9, 0.999),
        epoch_momentum_period: int = 10,
        backbone_lr_scale: float = 0.1,
        target_key: str = "prior",
        poly_power: float = 0.0,
        teacher_copies_student: bool | None = None,
        **base: Any,
    ) -> None:
        super().__init__(num_classes, optimizer, poly_power, **base)
        if teacher_mode not in TEACHER_MODES:
            raise ValueError(f"Unknown teacher_mode {teacher_mode!r}; valid: {', '.join(TEACHER_MODES)}")
        if getattr(consistency, "reduction", "none") != "none":
            raise ValueError("consistency must be element-wise: set reduction: none (e.g. torch.nn.MSELoss)")
        self.net = net
        self.loss = loss
        self.consistency = consistency
        self.teacher_mode = teacher_mode
        self.consistency_weight = consistency_weight
        self.momentum = (momentum, final_momentum)
        self.epoch_momentum = (float(epoch_momentum[0]), float(epoch_momentum[1]), int(epoch_momentum_period))
        self.backbone_lr_scale = backbone_lr_scale
        self.target_key = target_key
        self.teacher: nn.Module | None = None
        if teacher_mode != "none":
            self.teacher = teacher_net if teacher_net is not None else copy.deepcopy(net)
        if teacher_mode in ("ema", "ema_epoch"):
            assert self.teacher is not None
            if teacher_mode == "ema" if teacher_copies_student is None else teacher_copies_student:
                self.teacher.load_state_dict(net.state_dict())
            self.teacher.requires_grad_(False)
        self._momentum_schedule: Tensor | None = None

    @property
    def uses_labels(self) -> bool:  # type: ignore[override]
        """Label-free on a prior; learning the ground-truth ``mask`` (a test setting) uses labels."""
        return self.target_key == "mask"

    def forward(self, image: Tensor) -> Tensor:
        return self.net(image)

    def predict(self, image: Tensor) -> Tensor:
        return self.net(image)

    def _require(self, batch: dict[str, Any], key: str) -> Tensor:
        if key not in batch:
            hint = (
                "set data.prior=<name> to train on a prior"
                if key == self.target_key
                else "twin modes need data.train_transform=usgs.methods.twin_views.TwinViews "
                "(see conf/experiment/twins.yaml) and a DataModule that keeps its extra tensor keys, "
                "or teacher_mode=none"
            )
            raise KeyError(f"Batch has no {key!r} (keys: {sorted(batch)}); {hint}")
        return batch[key]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        student = self.net(batch["image"])
        seg_student = self.loss(student, self._require(batch, self.target_key))
        if self.teacher is None:
            self.log("train/loss", seg_student, prog_bar=True)
            return seg_student
        image2 = self._require(batch, "image" + SECOND_VIEW_SUFFIX)
        target2 = self._require(batch, self.target_key + SECOND_VIEW_SUFFIX)
        with torch.set_grad_enabled(self.teacher_mode == "mutual"):
            teacher = self.teacher(image2)
        seg_teacher = self.loss(teacher, target2)
        aligned_s, aligned_t, overlap = align_views(student, teacher, self._require(batch, "geometry"))
        per_sample = self.consistency(aligned_s, aligned_t).flatten(1).mean(dim=1)
        weight = overlap.to(per_sample.dtype)
        consistency = (per_sample * weight).sum() / weight.sum().clamp_min(1.0)
        loss = seg_student + seg_teacher + self.consistency_weight * consistency
        self.log_dict(
            {
                "train/seg_student": seg_student,
                "train/seg_teacher": seg_teacher,
                "train/consistency": consistency,
            }
        )
        self.log("train/loss", loss, prog_bar=True)
        return loss

    # --- teacher updates -----------------------------------------------------------------------
    def on_train_start(self) -> None:
        super().on_train_start()
        if self.teacher_mode == "ema":
            steps = int(self.trainer.estimated_stepping_batches)
            self._momentum_schedule = cosine_momentum_schedule(*self.momentum, steps)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        if self.teacher_mode != "ema" or self._momentum_schedule is None:
            return
        assert self.teacher is not None
        schedule = self._momentum_schedule
        # global_step has already advanced past this batch's optimizer step
        momentum = float(schedule[min(self.global_step - 1, len(schedule) - 1)])
        ema_update(self.teacher, self.net, momentum)
        self.log("train/momentum", momentum)

    def on_train_epoch_end(self) -> None:
        if self.teacher_mode != "ema_epoch":
            return
        assert self.teacher is not None
        low, high, period = self.epoch_momentum
        momentum = seed_epoch_momentum(self.current_epoch, low, high, period)
        ema_update(self.teacher, self.net, momentum)
        self.log("train/momentum", momentum)

    def param_groups(self) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = []
        trained = [self.net] + ([self.teacher] if self.teacher_mode == "mutual" else [])
        for net in trained:
            assert net is not None
            backbone = getattr(net, "backbone", None)
            if backbone is None:
                groups.append({"params": [p for p in net.parameters() if p.requires_grad]})
                continue
            backbone_ids = {id(p) for p in backbone.parameters()}
            rest = [p for p in net.parameters() if id(p) not in backbone_ids]
            groups += split_backbone_params(backbone, rest, self.backbone_lr_scale)
        extra = [
            p
            for n, p in self.named_parameters()
            if p.requires_grad and not n.startswith(("net.", "teacher."))
        ]
        return groups + ([{"params": extra}] if extra else [])


def load_twin_student(
    net: nn.Module, checkpoint: str | Path, prefix: str = "net.", classifier: str = "head.classifier."
) -> list[str]:
    """Load a twin checkpoint's student into ``net``, except a classifier of a different shape.

    Returns the keys left at their fresh initialisation (only ever ``classifier`` keys whose
    shapes differ: the new head for the dataset's classes, as the seed swapped the last 1x1 conv).
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(
            f"twin checkpoint {path} does not exist (model.pretrained=<path to a .ckpt "
            "written by python train.py experiment=twins...>)"
        )
    state = read_state_dict(path)  # weights_only=True: a file from elsewhere runs no code
    student = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not student:
        raise KeyError(
            f"{path}: no {prefix!r} weights (keys start with {sorted({k.split('.')[0] for k in state})})"
        )
    own = net.state_dict()
    fresh = [k for k, v in own.items() if k in student and student[k].shape != v.shape]
    if any(not k.startswith(classifier) for k in fresh):
        raise ValueError(
            f"{path}: shapes differ outside the classifier {classifier!r}: {fresh} "
            "(was the twin trained with another backbone?)"
        )
    missing = sorted(set(own) - set(student))
    unexpected = sorted(set(student) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{path}: student weights do not fit the network: missing {missing}, unexpected {unexpected}"
        )
    net.load_state_dict({k: v for k, v in student.items() if k not in fresh}, strict=False)
    return fresh


class TwinsFinetune(SupervisedSegmentation):
    """Supervised fine-tuning from a twin student (``pretrained``): all weights but the last 1x1
    classifier are loaded, which ``net`` already has for the dataset's classes; backbone at lr/10.
    """

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        pretrained: str | None = None,
        backbone_lr_scale: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(net, num_classes, backbone_lr_scale=backbone_lr_scale, **kwargs)
        if not pretrained:
            rank_zero_warn("TwinsFinetune without model.pretrained: training from scratch")
        self.fresh_keys = load_twin_student(net, pretrained) if pretrained else []
