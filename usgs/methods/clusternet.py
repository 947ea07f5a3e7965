"""ClusterNet (diploma thesis): PSPNet with a spectral-clustering layer, trained fully supervised.

The same module trains plain PSPNet (Zhao et al., CVPR 2017) when the net has no spectral layer
(``conf/model/pspnet.yaml``), so both are compared under one training recipe.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.nn import functional as F

from usgs.methods.base import OptimizerFactory, SegmentationModule, split_backbone_params
from usgs.nets.pspnet import PSPNet


class ClusterNet(SegmentationModule):
    """PSPNet / ClusterNet training: CE (ignore 255) on the main logits + ``aux_weight`` x CE on the
    layer3 auxiliary logits (PSPNet Sec. 4.1 weights the auxiliary loss 0.4), SGD with the backbone
    at ``backbone_lr_scale`` x lr (the new modules learn 10x faster, as in PSPNet's released
    training code), poly schedule from the base.

    ``train_cluster_bn=False`` leaves the two BatchNorms around the spectral layer out of the
    optimiser (their affine weights stay 1 and 0; running statistics still update), as the thesis's
    ``clusternet_train.py`` listed only layer0-4, PPM, classifier and aux head.

    ``predict(image [B,3,H,W])`` returns the main logits [B,num_classes,H,W]; the metric takes their
    argmax (the thesis thresholded every class score at 0.5 instead).
    """

    def __init__(
        self,
        net: PSPNet,
        num_classes: int,
        optimizer: OptimizerFactory | None = None,
        poly_power: float = 0.9,
        aux_weight: float = 0.4,
        backbone_lr_scale: float = 0.1,
        train_cluster_bn: bool = True,
        **base: Any,
    ) -> None:
        super().__init__(num_classes, optimizer, poly_power, **base)
        self.net = net
        self.aux_weight = aux_weight
        self.backbone_lr_scale = backbone_lr_scale
        self.train_cluster_bn = train_cluster_bn

    def forward(self, image: Tensor) -> Tensor:
        return self.net(image)["out"]

    def predict(self, image: Tensor) -> Tensor:
        return self.net(image)["out"]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        out = self.net(batch["image"])
        loss = F.cross_entropy(out["out"], batch["mask"], ignore_index=self.ignore_index)
        self.log("train/loss_main", loss)
        if "aux" in out and self.aux_weight > 0:
            aux = F.cross_entropy(out["aux"], batch["mask"], ignore_index=self.ignore_index)
            self.log("train/loss_aux", aux)
            loss = loss + self.aux_weight * aux
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def param_groups(self) -> list[dict[str, Any]]:
        left_out = {id(p) for p in self.net.backbone.parameters()}
        cluster = getattr(self.net, "cluster", None)
        if not self.train_cluster_bn and cluster is not None:
            left_out |= {id(p) for p in cluster.parameters()}
        rest = [p for p in self.parameters() if id(p) not in left_out]
        return split_backbone_params(self.net.backbone, rest, self.backbone_lr_scale)
