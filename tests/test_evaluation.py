"""Evaluation protocols on features with known answers, and evaluate.py end to end on shapes."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import Tensor, nn

from tests.conftest import load_bench
from usgs.evaluation.clustering import KMeansEvaluation, kmeans_large, pca_whitening, whiten
from usgs.evaluation.features import FeatureSource, salient_prototypes
from usgs.evaluation.linear_probe import LinearProbe, fit_linear, sample_pixels
from usgs.evaluation.report import TaskResult, mapped, markdown_table, mask_predictions
from usgs.evaluation.retrieval import SegmentRetrieval, majority_label, segment_prototypes, vote

NUM_CLASSES = 4
PERMUTATION = torch.tensor([2, 0, 3, 1])  # class c is embedded as one-hot axis PERMUTATION[c]


class OracleModule(nn.Module):
    """Embeds every pixel as a noisy one-hot of its (permuted) class, read from a lookup of masks.

    Saliency = pixels of classes >= 1 ("objects"). Lets every protocol's result be known in advance.
    """

    def __init__(self, masks: Tensor, noise: float = 0.05) -> None:
        super().__init__()
        self.masks = masks
        self.noise = noise

    def embed(self, image: Tensor) -> tuple[Tensor, Tensor]:
        index = image[:, 0, 0, 0].round().long()  # the test images carry their index in pixel (0,0)
        mask = self.masks[index]
        onehot = F.one_hot(PERMUTATION[mask], NUM_CLASSES).permute(0, 3, 1, 2).float()
        gen = torch.Generator().manual_seed(int(index[0]))
        emb = onehot + self.noise * torch.randn(onehot.shape, generator=gen)
        sal = torch.where(mask >= 1, 10.0, -10.0)
        return emb, sal


def oracle_data(n: int = 12, size: int = 8) -> tuple[list[dict], Tensor]:
    """n images: background class 0 with one object of class 1, 2 or 3 (VOC-like: one background class)."""
    masks = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        masks[i, 2:5, 2:6] = 1 + i % 3
    labels = masks.clone()
    labels[0, 0, 1] = 255  # an ignored pixel in the ground truth
    images = torch.zeros(n, 3, size, size)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.float32)
    batches = [{"image": images[i:i + 4], "mask": labels[i:i + 4]} for i in range(0, n, 4)]
    return batches, masks


def sources(noise: float = 0.05) -> tuple[FeatureSource, FeatureSource]:
    batches, masks = oracle_data()
    module = OracleModule(masks, noise)
    return (FeatureSource(module, batches, torch.device("cpu")),
            FeatureSource(module, batches, torch.device("cpu"), cache_mb=0.0))


def test_pca_whitening_gives_identity_covariance_and_drops_null_directions() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 3, generator=gen) @ torch.tensor([[3.0, 0, 0], [1, 0.5, 0], [0, 0, 0]])
    transform = pca_whitening(x)
    assert transform[1].shape == (3, 2)  # the third direction has zero variance
    xw = whiten(x, transform)
    cov = xw.t() @ xw / (x.shape[0] - 1)
    assert torch.allclose(cov, torch.eye(2), atol=1e-4)


def test_kmeans_large_subsample_init_reaches_the_full_solution() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = centres[torch.randint(0, 3, (30_000,), generator=gen)] + torch.randn(30_000, 2, generator=gen)
    large = kmeans_large(x, 3, seed=0, sample=500)
    found = large.centers[torch.cdist(centres, large.centers).argmin(1)]
    assert torch.allclose(found, centres, atol=0.05)
    # the subsample only seeds: the full-data passes end where full k-means ends
    full = kmeans_large(x, 3, seed=0, sample=100_000)
    assert float(large.inertia) == pytest.approx(float(full.inertia), rel=1e-4)


def test_vote_majority_and_tie_break() -> None:
    sim = torch.tensor([[0.9, 0.8, 0.7, 0.1], [0.9, 0.1, 0.8, 0.2]])
    labels = torch.tensor([0, 1, 1, 2])
    assert vote(sim, labels, k=3, num_labels=3).tolist() == [1, 0]  # 2 votes beat 1; 1-1 tie -> nearest
    assert vote(sim, labels, k=1, num_labels=3).tolist() == [0, 0]


def test_segment_prototypes_are_class_means() -> None:
    feats = torch.tensor([[[[1.0, 3.0], [0.0, 0.0]], [[0.0, 0.0], [2.0, 0.0]]]])  # [1,2,2,2]
    target = torch.tensor([[[0, 0], [1, 255]]])
    protos, labels, images = segment_prototypes(feats, target)
    assert labels.tolist() == [0, 1] and images.tolist() == [0, 0]
    assert torch.allclose(protos, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))


def test_linear_probe_pieces() -> None:
    feats = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    mask = torch.full((2, 4, 4), 255)
    mask[:, 0] = 1
    x, y = sample_pixels(feats, mask, per_image=3, generator=torch.Generator().manual_seed(0))
    assert x.shape == (6, 3) and y.tolist() == [1] * 6  # only labelled pixels are sampled
    points = torch.tensor([[2.0, 0.0], [0.0, 2.0], [-2.0, 0.0]]).repeat(10, 1)
    conv = fit_linear(points + 0.1 * torch.randn(30, 2), torch.tensor([0, 1, 2]).repeat(10), 3)
    assert conv(points.t().reshape(1, 2, 30, 1)).argmax(1).flatten().tolist() == [0, 1, 2] * 10


def test_linear_probe_is_perfect_on_oracle_features() -> None:
    train, evaluation = sources()
    result = LinearProbe(pixels_per_image=20, seeds=(0, 1)).run(train, evaluation, NUM_CLASSES, list("abcd"))
    scores = result.scores["linear_probe"]
    assert scores["miou"] == [1.0, 1.0] and scores["miou_mean_std"] == (1.0, 0.0)


def test_kmeans_protocols_recover_the_classes_up_to_permutation() -> None:
    train, evaluation = sources()
    # No whitening here: it would blow the pure-noise axes of these toy features up to unit variance.
    kmeans = KMeansEvaluation(seeds=(0, 1), pixels_per_image=16, pca_whiten=False)
    result = kmeans.run(train, evaluation, NUM_CLASSES, list("abcd"))
    # pixels: 4 separable clusters -> Hungarian recovers the permutation exactly
    assert result.scores["pixels"]["miou"] == pytest.approx([1.0, 1.0])
    # prototypes: one per image, 3 object clusters (k = classes - 1) + the fixed background id
    assert result.scores["prototypes"]["miou"] == pytest.approx([1.0, 1.0])
    mapping = result.scores["prototypes"]["mapping"]
    assert mapping[0] == 0 and sorted(mapping.tolist()) == [0, 1, 2, 3]


def test_retrieval_on_oracle_features_and_subset() -> None:
    train, evaluation = sources()
    for segments, variant in (("oracle", "oracle_segments"), ("saliency", "saliency_segments")):
        result = SegmentRetrieval(k=3, segments=segments).run(train, evaluation, NUM_CLASSES, list("abcd"))
        assert result.scores[variant]["miou"] == [1.0]
    subset = SegmentRetrieval(k=1, classes=["d", "b"], segments="oracle").run(
        train, evaluation, NUM_CLASSES, list("abcd"))
    assert subset.class_names == ["d", "b"] and subset.scores["oracle_segments"]["miou"] == [1.0]
    with pytest.raises(ValueError, match="valid"):
        SegmentRetrieval(classes=["zebra"]).run(train, evaluation, NUM_CLASSES, list("abcd"))


def test_salient_prototypes_weight_by_the_logit_above_threshold() -> None:
    feats = torch.tensor([[[[1.0, 0.0], [0.0, 5.0]], [[0.0, 1.0], [3.0, 5.0]]]])  # [1,2,2,2]
    logits = torch.tensor([[[2.0, 0.4], [1.0, -3.0]]])  # pixels (0,0) and (1,0) exceed 0.5
    protos, valid, fg = salient_prototypes(feats, torch.sigmoid(logits))
    # 2 * (1, 0) + 1 * (0, 3) = (2, 3), normalised
    assert torch.allclose(protos[0], torch.tensor([2.0, 3.0]) / math.sqrt(13), atol=1e-5)
    assert fg.tolist() == [[[True, False], [True, False]]] and valid.tolist() == [True]
    plain, _, fg0 = salient_prototypes(feats, torch.sigmoid(logits), logit_threshold=0.0, logit_weighted=False)
    # probability > 0.5: pixels (0,0), (0,1), (1,0) -> (1, 0) + (0, 1) + (0, 3) = (1, 4)
    assert torch.allclose(plain[0], torch.tensor([1.0, 4.0]) / math.sqrt(17), atol=1e-5)


def test_majority_label_excludes_background_and_breaks_ties_upwards() -> None:
    target = torch.tensor([[0, 0, 0, 2], [1, 2, 1, 255]])
    region = torch.ones(2, 4, dtype=torch.bool)
    assert majority_label(target, region, excluded=[0, 255]) == 2  # 1 and 2 tie at 2 pixels: larger id
    assert majority_label(target, region, excluded=[255]) == 0
    assert majority_label(target, target == 0, excluded=[0, 255]) is None


class LookupModule(nn.Module):
    """Per-image constant embedding and a per-image saliency logit map, looked up by image index."""

    def __init__(self, emb: Tensor, sal: Tensor) -> None:
        super().__init__()
        self.emb, self.sal = emb, sal

    def embed(self, image: Tensor) -> tuple[Tensor, Tensor]:
        index = image[:, 0, 0, 0].round().long()
        h, w = image.shape[-2:]
        return self.emb[index].view(len(index), -1, 1, 1).expand(-1, -1, h, w), self.sal[index]


def test_retrieval_from_predicted_saliency_hand_computed() -> None:
    names = ["background", "cat", "dog"]
    top = torch.zeros(4, 4, dtype=torch.bool)
    top[:2] = True
    sal = torch.where(top, 5.0, -5.0).expand(4, 4, 4)  # every image: the top two rows are salient
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.2], [0.8, 0.2]])  # train 0, 1, 2; eval 3
    masks = torch.zeros(4, 4, 4, dtype=torch.long)
    masks[0, 0, :] = 1
    masks[0, 1, :1] = 1
    masks[0, 1, 1:] = 2  # train 0: 5 cat, 3 dog in the salient rows -> "cat"
    masks[1, :2] = 2  # train 1: dog
    # train 2: only background under its saliency -> not in the database (it would be the nearest)
    masks[3, :2, :3] = 1  # eval: 6 cat pixels inside the segment, 2 background
    masks[3, 3, 0] = 1  # and 1 cat pixel outside it
    images = torch.zeros(4, 3, 4, 4)
    images[:, 0, 0, 0] = torch.arange(4.0)
    module = LookupModule(emb, sal)
    train = FeatureSource(module, [{"image": images[:3], "mask": masks[:3]}], torch.device("cpu"))
    evaluation = FeatureSource(module, [{"image": images[3:], "mask": masks[3:]}], torch.device("cpu"))
    result = SegmentRetrieval().run(train, evaluation, 3, names)
    # prediction: top rows cat, rest background. cat: TP 6, FP 2, FN 1 -> 6/9; background: TP 7, FP 1,
    # FN 2 -> 7/10; dog absent from both (NaN, left out)
    iou = result.scores["saliency_segments"]["iou"]
    assert iou[0] == pytest.approx(0.7) and iou[1] == pytest.approx(6 / 9) and math.isnan(iou[2])
    assert result.scores["saliency_segments"]["miou"] == [pytest.approx((0.7 + 6 / 9) / 2)]
    subset = SegmentRetrieval(classes=["cat", "dog"]).run(train, evaluation, 3, names)
    assert subset.scores["saliency_segments"]["miou"] == [pytest.approx(6 / 9)]  # background left out


def test_kmeans_prototypes_threshold_the_saliency_logit_at_half() -> None:
    # 4 images, 4x4: object (class 1) in the top-left 2x2 at logit 5; a ring of 5 background
    # pixels around it at logit 0.3 (probability 0.57): salient for "p > 0.5", not for "logit > 0.5"
    ring = torch.zeros(4, 4, dtype=torch.bool)
    ring[:3, :3] = True
    ring[:2, :2] = False
    sal = torch.full((4, 4), -5.0)
    sal[ring] = 0.3
    sal[:2, :2] = 5.0
    masks = torch.zeros(4, 4, 4, dtype=torch.long)
    masks[:, :2, :2] = 1
    images = torch.zeros(4, 3, 4, 4)
    images[:, 0, 0, 0] = torch.arange(4.0)
    module = LookupModule(torch.eye(4)[:, :2] + 1.0, sal.expand(4, 4, 4))
    source = FeatureSource(module, [{"image": images, "mask": masks}], torch.device("cpu"))
    default = KMeansEvaluation(seeds=(0,), pixels=False, pca_whiten=False).run(source, source, 2, ["bg", "obj"])
    assert default.scores["prototypes"]["miou"] == [pytest.approx(1.0)]
    loose = KMeansEvaluation(seeds=(0,), pixels=False, pca_whiten=False, logit_threshold=0.0)
    scores = loose.run(source, source, 2, ["bg", "obj"]).scores["prototypes"]
    # per image: object 4 px, ring 5 px predicted object, 7 px background: obj 4/9, bg 7/12
    assert scores["iou"] == [pytest.approx(7 / 12), pytest.approx(4 / 9)]


def test_decoder_layer_is_the_head_features_before_the_projection() -> None:
    from usgs.methods.maskcontrast import MaskContrast
    from usgs.nets.deeplab import DeepLabV3

    torch.manual_seed(0)
    net = DeepLabV3(num_classes=8, backbone="resnet18", aspp_rates=(1, 2), head_channels=16, dropout=0.0)
    module = MaskContrast(net, num_classes=3).eval()
    image = torch.randn(2, 3, 16, 16)
    source = FeatureSource(module, [{"image": image, "mask": torch.zeros(2, 16, 16, dtype=torch.long)}],
                           torch.device("cpu"), layer="decoder")
    (_, out), = list(source)
    with torch.no_grad():
        expected = F.interpolate(net.features(image), size=(16, 16), mode="bilinear", align_corners=False)
    assert out.features.shape == (2, 16, 16, 16) and torch.allclose(out.features.dense(), expected, atol=1e-5)
    assert LinearProbe().layer == "decoder" and KMeansEvaluation().layer == "projection"


def test_report_statistics_tables_and_mapping() -> None:
    result = TaskResult("kmeans", ["x", "y"])
    per_seed = [{"miou": torch.tensor(0.2), "pixel_accuracy": torch.tensor(0.5),
                 "iou": torch.tensor([0.1, float("nan")]), "mapping": torch.tensor([1, 0, -1])},
                {"miou": torch.tensor(0.4), "pixel_accuracy": torch.tensor(0.7),
                 "iou": torch.tensor([0.3, float("nan")]), "mapping": torch.tensor([0, 1, -1])}]
    result.add_scores("pixels", per_seed)
    flat = result.flat()
    assert flat["kmeans/pixels/miou"] == pytest.approx(0.3) and flat["kmeans/pixels/miou_std"] == pytest.approx(0.1)
    assert flat["kmeans/pixels/iou/x"] == pytest.approx(0.2) and math.isnan(flat["kmeans/pixels/iou/y"])
    table = markdown_table([result])
    assert "| kmeans | pixels | 2 | 30.0 ± 10.0 | 60.0 ± 10.0 |" in table and "| pixels | 20.0 | - |" in table
    assert mapped(torch.tensor([[0, 1, 2]]), per_seed[0]["mapping"]).tolist() == [[1, 0, 255]]
    probs = torch.tensor([[[[0.2]], [[0.8]]]])
    flip = mask_predictions(probs, {"image": torch.zeros(1, 3, 1, 1)}, refine=lambda img, p: p[::-1].copy())
    assert mask_predictions(probs, {}).item() == 1 and flip.item() == 0


def test_evaluate_end_to_end_on_shapes(make_cfg, tmp_path, capsys) -> None:
    from usgs.run.evaluate import evaluate

    common = ["experiment=maskcontrast", "data.image_size=32", "model.net.backbone=resnet18",
              "max_train_images=8", "max_eval_images=8", "data.eval_batch_size=4"]
    cfg = make_cfg([*common, "task=kmeans", "task.seeds=[0,1]", "task.pixels_per_image=50", "crf=true"],
                   config_name="evaluate", run_dir=tmp_path / "kmeans")
    metrics = evaluate(cfg)
    bars = capsys.readouterr().err  # progress: each pass over the split and the k-means fits
    assert "val split pass 1 (network)" in bars and "val split pass 2 (cached features)" in bars
    assert "k-means (k=7) per seed" in bars
    saved = json.loads((tmp_path / "kmeans" / "metrics.json").read_text())
    assert saved["kmeans/pixels/num_seeds"] == 2.0 and 0.0 <= saved["kmeans/pixels/miou"] <= 1.0
    assert set(saved) == {k for k, v in metrics.items()} and "kmeans/prototypes/miou" in saved
    assert (tmp_path / "kmeans" / "overlays" / "kmeans_pixels.png").is_file()
    assert "| kmeans | prototypes | 2 |" in (tmp_path / "kmeans" / "metrics.md").read_text()
    cfg = make_cfg([*common, "task=linear_probe", "task.pixels_per_image=50"], config_name="evaluate",
                   run_dir=tmp_path / "probe")
    probe = evaluate(cfg)
    assert "linear_probe/linear_probe/miou" in probe
    # the keys bench/budget_curves.py reads are the ones written
    curves = load_bench("budget_curves")
    assert set(curves.EVAL_KEYS["kmeans"].values()) <= set(saved)
    assert set(curves.EVAL_KEYS["linear_probe"].values()) <= set(probe)



def test_centre_logits_give_the_softmax_of_whitened_squared_distances() -> None:
    from usgs.evaluation.clustering import centre_logits, pca_whitening, whiten

    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(2, 5, 6, 16), dim=-1)
    centres = torch.randn(4, 16)
    for transform in (pca_whitening(torch.randn(200, 16)), None):
        sqdist = ((whiten(x, transform).unsqueeze(-2) - centres) ** 2).sum(-1)  # [2,5,6,4]
        torch.testing.assert_close(torch.softmax(centre_logits(x, transform, centres), -1),
                                   torch.softmax(-sqdist, -1), atol=1e-5, rtol=1e-5)


def test_kmeans_whitens_maskcontrast_projections_but_not_raw_backbone_features(make_cfg) -> None:
    """PCA whitening is MaskContrast's protocol for its 32-d projection; a frozen backbone's 1280-d features
    are clustered as they are (whitening them clustered noise: docs/backbones.md). One override each way."""
    mc = make_cfg(["task=kmeans"], config_name="evaluate")
    frozen = make_cfg(["task=kmeans", "model=frozen_backbone", "model.backbone.weights=random"],
                      config_name="evaluate")
    forced = make_cfg(["task=kmeans", "model=frozen_backbone", "model.backbone.weights=random",
                       "task.pca_whiten=true"], config_name="evaluate")
    assert mc.task.pca_whiten is True and frozen.task.pca_whiten is False and forced.task.pca_whiten is True
    assert instantiate(frozen.model).kmeans_pca_whiten is False
