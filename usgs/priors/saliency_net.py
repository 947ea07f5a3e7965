"""A small fully-convolutional saliency net, self-trained on unsupervised saliency maps (DeepUSPS idea).

DeepUSPS (Nguyen et al., NeurIPS 2019) trains a saliency network on the maps of classical
label-free methods; the network averages their per-image mistakes out and generalises across
images. This is the minimal CPU-sized version: a ~90k-parameter dilated FCN at 96 px, trained with
soft binary cross-entropy on the classical probability maps, a few hundred steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from usgs.data.transforms import normalize

__all__ = ["TinySaliencyNet", "train_saliency_net", "predict_saliency"]


def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinySaliencyNet(nn.Module):
    """image float [B,3,H,W] (ImageNet-normalised) -> foreground logit [B,1,H,W].

    Two stride-2 stages then dilated 3x3 convs (rates 2, 4, 8) for an image-wide receptive field
    at 96 px, a 1x1 classifier, bilinear upsampling to the input size.
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _block(3, width, 2),
            _block(width, 2 * width, 2),
            _block(2 * width, 2 * width, 1, 2),
            _block(2 * width, 2 * width, 1, 4),
            _block(2 * width, 2 * width, 1, 8),
        )
        self.classifier = nn.Conv2d(2 * width, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(
            self.classifier(self.body(x)), size=x.shape[-2:], mode="bilinear", align_corners=False
        )


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def train_saliency_net(
    images: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    steps: int = 300,
    size: int = 96,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
) -> TinySaliencyNet:
    """Train on uint8 RGB ``images`` [H,W,3] with soft targets float [H,W] in [0,1]; returns the net (eval mode).

    Random horizontal flips are the only augmentation; Adam (lr 1e-3) as a robust default for a small
    net trained from scratch.
    """
    torch.manual_seed(seed)
    net = TinySaliencyNet()
    if steps <= 0 or not images:
        return net.eval()
    x = torch.stack([normalize(_resize(im, size)) for im in images])
    y = torch.stack([torch.from_numpy(_resize(t.astype(np.float32), size)) for t in targets])[:, None]
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (min(batch_size, len(x)),), generator=gen)
        xb, yb = x[idx], y[idx]
        if bool(torch.rand(1, generator=gen) < 0.5):
            xb, yb = xb.flip(-1), yb.flip(-1)
        loss = F.binary_cross_entropy_with_logits(net(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def predict_saliency(net: nn.Module, image: np.ndarray, size: int = 96) -> np.ndarray:
    """Foreground probability float [H,W] of uint8 RGB ``image`` [H,W,3]."""
    logit = net(normalize(_resize(image, size))[None])
    prob = torch.sigmoid(F.interpolate(logit, size=image.shape[:2], mode="bilinear", align_corners=False))
    return prob[0, 0].numpy()
