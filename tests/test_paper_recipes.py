"""The originals' recipes (conf/experiment/paper/) compose to the originals' values.

Each table row is (config key, the original's value, where the original sets it: repo path:line @ commit).
A later edit of a config that drifts from the original fails here. The pieces the recipes need
(centre crops, vertical flips, a loss module, the subset mIoU, a crop budget) are checked below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import ROOT, SHARED_DATA, compose_config

MC = "wvangansbeke/Unsupervised-Semantic-Segmentation @ dfd5fa0a"
SUP = f"{MC} pretrain/configs/VOCSegmentation_supervised_saliency_model.yml"
UNS = f"{MC} pretrain/configs/VOCSegmentation_unsupervised_saliency_model.yml"
TW = "Godofnothing/-Unsupervised-Guidance-For-Semantic-Segmentation @ 981bc8f8"
KS = "Godofnothing/-Unsupervised-Guidance-For-Semantic-Segmentation @ 9f20088e scripts/"
CN = "steliosav/Diploma-Thesis @ 65e1c18a"
PS = "steliosav/Diploma-Thesis @ 480547f2"
VH = "LucaBon/weakly_semi-supervised_segmentation @ 64fbcf90"
WS = "Amsterdam-Internships/Image-Level-Supervised-Semantic-Segmentation @ 2bae41c7"

_MC_SHARED = [
    ("model.net.backbone", "resnet50", "SUP:13 / UNS:13"),
    ("model.net.output_stride", 8, f"SUP:15 dilated; {MC} pretrain/modules/resnet_dilated.py:9"),
    ("model.net.num_classes", 32, "SUP:18 / UNS:18 ndim"),
    ("model.optimizer._target_", "torch.optim.SGD", "SUP:28 / UNS:28"),
    ("model.optimizer.lr", 0.004, "SUP:30 / UNS:30"),
    ("model.optimizer.weight_decay", 1e-4, "SUP:31 / UNS:31"),
    ("model.optimizer.momentum", 0.9, "SUP:32 / UNS:32"),
    ("model.poly_power", 0.9, f"SUP:34; {MC} pretrain/utils/common_config.py:148"),
    ("model.temperature", 0.5, "SUP:38 / UNS:38"),
    ("model.momentum", 0.999, "SUP:39 / UNS:39"),
    ("trainer.max_epochs", 40, "SUP:27 / UNS:27"),
    ("data.train_transform.crop_size", 224, f"{MC} pretrain/utils/common_config.py:101"),
    ("data.train_transform.scale", [0.2, 1.0], f"{MC} pretrain/utils/common_config.py:101"),
    ("data.train_transform.resized_crop", True, f"{MC} pretrain/utils/common_config.py:101"),
    ("data.train_transform.hflip", True, f"{MC} pretrain/utils/common_config.py:106"),
    ("data.train_transform.swap_after", 3, f"{MC} pretrain/data/dataloaders/dataset.py:41-43"),
    ("model.augment.jitter", [0.4, 0.4, 0.4, 0.1], f"{MC} pretrain/utils/common_config.py:103"),
    ("model.augment.jitter_p", 0.8, f"{MC} pretrain/utils/common_config.py:104"),
    ("model.augment.gray_p", 0.2, f"{MC} pretrain/utils/common_config.py:105"),
    ("model.gather_prototypes", False, f"{MC} pretrain/modules/moco/builder.py:165"),
    ("model.shuffle_bn", True, f"{MC} pretrain/modules/moco/builder.py:78, :106"),
]
_MC_EVAL = [
    ("split", "test", f"{MC} segmentation/utils/common_config.py:107 VOC12(split='val') = our test"),
    ("data_from_checkpoint", False, "the recipe's data, not the pretraining run's"),
    ("data.eval_transform.size", [512, 512], f"{MC} segmentation/utils/common_config.py:138"),
]
_CN_SHARED = [
    ("data.label_mode", "raw", f"{CN} utils/cityscapes_dataset.py:83 (labelIds read as they are)"),
    ("data.batch_size", 1, f"{CN} clusternet_train.py:19"),
    ("data.train_transform.crop_size", 713, f"{CN} utils/cityscapes_dataset.py:47"),
    ("data.train_transform.center_crop", True, f"{CN} utils/cityscapes_dataset.py:47"),
    ("data.train_transform.scale", [1.0, 1.0], f"{CN} utils/cityscapes_dataset.py:43 (commented out)"),
    ("data.train_transform.hflip", False, f"{CN} utils/cityscapes_dataset.py:46 (commented out)"),
    ("data.eval_transform.crop", 713, f"{CN} utils/cityscapes_dataset.py:69; network_eval.py:15-17"),
    ("model.net.backbone", "resnet50", f"{CN} clusternet_train.py:25 layers=50"),
    ("model.net.deep_stem", True, f"{CN} models/resnet.py:99 deep_base=True"),
    ("model.net.weights", "deepstem_resnet50", f"{CN} models/resnet.py:201 resnet50_v2.pth"),
    ("model.net.output_stride", 8, f"{CN} clusternet_train.py:25 zoom_factor=8"),
    ("model.net.bins", [2, 3, 6, 8], f"{CN} clusternet_train.py:25"),
    ("model.net.dropout", 0.1, f"{CN} clusternet_train.py:25"),
    ("model.aux_weight", 0.4, f"{CN} clusternet_train.py:59"),
    ("model.optimizer._target_", "torch.optim.SGD", f"{CN} clusternet_train.py:36"),
    ("model.optimizer.lr", 0.01, f"{CN} clusternet_train.py:30, :35 (heads at 10 x 1e-3)"),
    ("model.backbone_lr_scale", 0.1, f"{CN} clusternet_train.py:33 (layer0-4 at 1e-3)"),
    ("model.optimizer.momentum", 0.9, f"{CN} clusternet_train.py:36"),
    ("model.optimizer.weight_decay", 1e-4, f"{CN} clusternet_train.py:36"),
    ("model.poly_power", 0.0, f"{CN} clusternet_train.py:45-66 (no scheduler)"),
]
_VH_TASK1 = [
    ("data.n1", 3, f"{VH} src/data.py:200"),
    ("data.n2", 23, f"{VH} src/data.py:201"),
    ("data.split_seed", 341, f"{VH} src/data.py:202"),
    ("data.num_classes", 6, f"{VH} src/constants.py:11"),
    ("data.ignore_clutter", False, f"{VH} src/constants.py:11 (6 classes, clutter included)"),
    ("data.train_gt", "full", f"{VH} src/constants.py:5"),
    ("data.crop_size", 200, f"{VH} src/constants.py:3"),
    ("data.train_transform.crop_size", 200, f"{VH} src/data.py:133"),
    ("data.crops_per_epoch", 10000, f"{VH} src/data.py:81"),
    ("data.tile_size", 200, f"{VH} src/data.py:172-176"),
    ("data.train_transform.scale", [1.0, 1.0], f"{VH} src/data.py:84-105 (flips only)"),
    ("data.train_transform.hflip", True, f"{VH} src/data.py:88 mirror"),
    ("data.train_transform.vflip", True, f"{VH} src/data.py:86 flip"),
    ("model.net._target_", "usgs.nets.encdec_unpool.EncDecUnpool", f"{VH} src/run_training.py:85"),
    ("model.class_weights", [1, 1, 1, 1, 10, 1], f"{VH} src/constants.py:14"),
    ("model.optimizer._target_", "torch.optim.Adam", f"{VH} src/run_training.py:27"),
    ("model.optimizer.lr", 1e-3, f"{VH} src/run_training.py:98"),
    ("model.optimizer.weight_decay", 0.0, f"{VH} src/run_training.py:27"),
    ("model.poly_power", 0.0, f"{VH} src/run_training.py:27-34 (no scheduler)"),
    ("model.subset_classes", [0, 1, 2, 3, 4], f"{VH} src/testing.py:85 (clutter dropped)"),
]

RECIPES: dict[str, tuple[str, list[tuple[str, Any, str]]]] = {
    "maskcontrast_voc_supervised_saliency": ("train", [
        *_MC_SHARED,
        ("data.saliency_dir", "saliency_supervised_model", f"SUP:8; {MC} pretrain/data/dataloaders/pascal_voc.py:41"),
        ("data.batch_size", 64, "SUP:10"),
        ("model.net.weights", "torchvision_resnet50", f"SUP:16; {MC} pretrain/utils/common_config.py:21"),
        ("model.frozen_stages", 3, f"SUP:24; {MC} pretrain/utils/utils.py:58"),
        ("model.queue_size", 128, "SUP:40"),
    ]),
    "maskcontrast_voc_unsupervised_saliency": ("train", [
        *_MC_SHARED,
        ("data.saliency_dir", "saliency_unsupervised_model", "UNS:8"),
        ("data.batch_size", 128, "UNS:10"),
        ("model.net.weights", "moco_v2_800ep_r50", "UNS:16-17"),
        ("model.frozen_stages", 0, "UNS:24"),
        ("model.queue_size", 256, "UNS:40"),
    ]),
    "maskcontrast_voc_supervised_saliency_linear": ("evaluate", [
        *_MC_EVAL,
        ("task._target_", "usgs.evaluation.linear_probe.LinearProbe", f"{MC} segmentation/linear_finetune.py"),
        ("data.train_list", "train_aug", f"{MC} segmentation/configs/linear_finetune/*_supervised_saliency.yml:4"),
        ("data.val_list", "val", "no val carved out of trainaug"),
        ("data.eval_batch_size", 16, f"{MC} segmentation/configs/linear_finetune/*_supervised_saliency.yml:8"),
    ]),
    "maskcontrast_voc_unsupervised_saliency_linear": ("evaluate", [
        *_MC_EVAL,
        ("task._target_", "usgs.evaluation.linear_probe.LinearProbe", f"{MC} segmentation/linear_finetune.py"),
        ("data.train_list", "train_aug", f"{MC} segmentation/configs/linear_finetune/*_unsupervised_saliency.yml:4"),
        ("data.val_list", "val", "no val carved out of trainaug"),
        ("data.eval_batch_size", 16, f"{MC} segmentation/configs/linear_finetune/*_unsupervised_saliency.yml:8"),
    ]),
    "maskcontrast_voc_supervised_saliency_kmeans": ("evaluate", [
        *_MC_EVAL,
        ("task._target_", "usgs.evaluation.clustering.KMeansEvaluation", f"{MC} segmentation/kmeans.py"),
        ("task.seeds", [0, 1, 2, 3, 4], f"{MC} segmentation/kmeans.py:27, :77"),
        ("data.eval_batch_size", 10, f"{MC} segmentation/configs/kmeans/*_supervised_saliency.yml:5"),
    ]),
    "maskcontrast_voc_unsupervised_saliency_kmeans": ("evaluate", [
        *_MC_EVAL,
        ("task._target_", "usgs.evaluation.clustering.KMeansEvaluation", f"{MC} segmentation/kmeans.py"),
        ("task.seeds", [0, 1, 2, 3, 4], f"{MC} segmentation/kmeans.py:27, :77"),
        ("data.eval_batch_size", 10, f"{MC} segmentation/configs/kmeans/*_unsupervised_saliency.yml:5"),
    ]),
    "maskcontrast_voc_unsupervised_saliency_retrieval": ("evaluate", [
        *_MC_EVAL,
        ("task._target_", "usgs.evaluation.retrieval.SegmentRetrieval", f"{MC} segmentation/retrieval.py"),
        ("task.k", 1, f"{MC} segmentation/utils/retrieval_utils.py:85 argmax"),
        ("task.classes", ["aeroplane", "bottle", "bus", "car", "cat", "cow", "person"],
         f"{MC} segmentation/configs/retrieval/retrieval_VOCSegmentation_unsupervised_saliency.yml:25"),
        ("data.train_list", "train", f"{MC} segmentation/retrieval.py:69 VOC12(split='train')"),
        ("data.train_label_dir", "SegmentationClass", f"{MC} segmentation/data/dataloaders/pascal_voc.py:45-46"),
        ("data.val_list", "val", "the database is all of train.txt"),
    ]),
    "maskcontrast_voc_supervised_saliency_retrieval": ("evaluate", [
        *_MC_EVAL,
        ("task.classes", ["aeroplane", "bottle", "bus", "car", "cat", "cow", "person"],
         f"{MC} segmentation/configs/retrieval/retrieval_VOCSegmentation_unsupervised_saliency.yml:25"),
        ("data.train_list", "train", f"{MC} segmentation/retrieval.py:69"),
        ("data.train_label_dir", "SegmentationClass", f"{MC} segmentation/data/dataloaders/pascal_voc.py:45-46"),
    ]),
    "twins_intel": ("train", [
        ("data.prior", "kmeans_seed", f"{KS}kMeansSegmentation.sh:18-19, kMeansRelabeling.sh:17"),
        ("data.batch_size", 128, f"{TW} main_twins.py:32"),
        ("data.train_transform.crop_size", 128, f"{TW} main_twins.py:40, :107"),
        ("data.train_transform.scale", [1.0, 1.0], f"{TW} main_twins.py:107 (resize, no crop)"),
        ("data.train_transform.hflip", False, f"{TW} main_twins.py:106-117"),
        ("data.train_transform.photometric", True, f"{TW} main_twins.py:108-114"),
        ("data.train_transform.same_geometry", True, f"{TW} src/datasets.py MultiViewSegmentationDataset"),
        ("data.eval_transform.size", 128, f"{TW} main_twins.py:120"),
        ("model.num_predictions", 40, f"{TW} main_twins.py:30"),
        ("model.net.backbone", "resnet50", f"{TW} main_twins.py:73"),
        ("model.net.weights", "torchvision_resnet50", f"{TW} main_twins.py:134"),
        ("model.teacher_mode", "mutual", f"{TW} main_twins.py:50, :156-161"),
        ("model.loss._target_", "usgs.methods.losses.DiceLoss", f"{TW} main_twins.py:36"),
        ("model.consistency._target_", "torch.nn.MSELoss", f"{TW} main_twins.py:37"),
        ("model.consistency_weight", 1.0, f"{TW} main_twins.py:38"),
        ("model.optimizer._target_", "torch.optim.Adam", f"{TW} main_twins.py:156"),
        ("model.optimizer.lr", 1e-3, f"{TW} main_twins.py:43"),
        ("model.backbone_lr_scale", 0.1, f"{TW} main_twins.py:157-158"),
        ("model.poly_power", 0.0, f"{TW} main_twins.py:46"),
        ("model.epoch_momentum", [0.9, 0.999], f"{TW} main_twins.py:52-53"),
        ("model.epoch_momentum_period", 10, f"{TW} main_twins.py:51"),
        ("trainer.max_epochs", 10, f"{TW} main_twins.py:42"),
    ]),
    "twins_voc_finetune": ("train", [
        ("model._target_", "usgs.methods.twins.TwinsFinetune", f"{TW} main_pascal_voc.py:110-114"),
        ("data.train_list", "train", f"{TW} main_pascal_voc.py:97"),
        ("data.batch_size", 128, f"{TW} main_pascal_voc.py:30"),
        ("data.train_transform.resize", True, f"{TW} main_pascal_voc.py:79"),
        ("data.train_transform.crop_size", 128, f"{TW} main_pascal_voc.py:36"),
        ("data.train_transform.hflip", False, f"{TW} main_pascal_voc.py:78-89"),
        ("data.eval_transform.size", 128, f"{TW} main_pascal_voc.py:92"),
        ("model.loss._target_", "usgs.methods.losses.DiceLoss", f"{TW} main_pascal_voc.py:34, :51"),
        ("model.optimizer._target_", "torch.optim.Adam", f"{TW} main_pascal_voc.py:126"),
        ("model.optimizer.lr", 1e-3, f"{TW} main_pascal_voc.py:39"),
        ("model.optimizer.weight_decay", 0.0, f"{TW} main_pascal_voc.py:126-129"),
        ("model.backbone_lr_scale", 0.1, f"{TW} main_pascal_voc.py:127"),
        ("model.poly_power", 0.0, f"{TW} main_pascal_voc.py:42"),
        ("trainer.max_epochs", 10, f"{TW} main_pascal_voc.py:38"),
    ]),
    "clusternet_cityscapes": ("train", [
        *_CN_SHARED,
        ("model.net.head_channels", 0, f"{CN} models/clusternet.py:70"),
        ("model.net.spectral._target_", "usgs.nets.spectral.SpectralClustering", f"{CN} models/clusternet.py"),
        ("model.net.spectral.num_clusters", 40, f"{CN} README / model=clusternet_thesis"),
        ("trainer.max_epochs", 50, f"{CN} clusternet_train.py:45"),
    ]),
    "pspnet_cityscapes": ("train", [
        *_CN_SHARED,
        ("model.net.spectral", None, f"{PS} models/pspnet_train.py:28"),
        ("model.net.head_channels", 512, f"{PS} models/pspnet.py:65-70"),
        ("trainer.max_epochs", 10, f"{PS} models/pspnet_train.py:48"),
    ]),
    "vaihingen_task1": ("train", [*_VH_TASK1, ("data.train_set", "n1", f"{VH} src/run_training.py:89"),
                                  ("trainer.max_epochs", 20, f"{VH} src/run_training.py:99"),
                                  ("data.batch_size", 10, f"{VH} src/run_training.py:90")]),
    "vaihingen_task2": ("train", [*_VH_TASK1, ("data.train_set", "n1+n2", f"{VH} src/run_training.py:110-113"),
                                  ("trainer.max_epochs", 20, f"{VH} src/run_training.py:123"),
                                  ("data.batch_size", 10, f"{VH} src/run_training.py:111, :113")]),
    "wsss_voc_classifier": ("train", [
        ("model.backbone._target_", "usgs.nets.backbones.vgg16_bn", f"{WS} src/seed/train_seed.py:217"),
        ("model.backbone.weights", "torchvision_vgg16_bn", f"{WS} src/seed/train_seed.py:217; config.py:40"),
        ("model.cam_layer", "backbone.features.42", f"{WS} config.py:50"),
        ("model.background_index", 0, f"{WS} src/seed/create_guides.py:44-47"),
        ("model.pos_weight", None, f"{WS} config.py:49; src/seed/train_seed.py:293"),
        ("model.optimizer._target_", "torch.optim.Adam", f"{WS} src/seed/train_seed.py:306"),
        ("model.optimizer.lr", 1e-5, f"{WS} config.py:44"),
        ("model.optimizer.weight_decay", 0.0, f"{WS} config.py:48"),
        ("model.poly_power", 0.0, f"{WS} src/seed/train_seed.py (no scheduler)"),
        ("data.batch_size", 15, f"{WS} config.py:43"),
        ("data.train_transform.crop_size", 224, f"{WS} src/seed/seed_dataset.py:66"),
        ("data.train_transform.hflip", True, f"{WS} src/seed/seed_dataset.py:57"),
        ("data.eval_transform.size", [224, 224], f"{WS} src/seed/seed_dataset.py:130"),
        ("trainer.max_steps", 8000, f"{WS} config.py:45"),
    ]),
    "wsss_voc_pseudo_labels": ("make_priors", [
        ("prior._target_", "usgs.priors.cam_saliency.AttentionSaliencyPrior", f"{WS} src/seed/create_guides.py"),
        ("split", "train", f"{WS} main.py:53-56"),
        ("data.saliency_dir", "saliency_picanet", f"{WS} config.py:31; src/saliency/create_saliency.py"),
        ("prior.background_index", 0, f"{WS} src/seed/create_guides.py:44-49, :81-83, :116-117"),
        ("prior.threshold", 0.4, f"{WS} config.py:57"),
        ("prior.min_saliency_fraction", 0.01, f"{WS} src/seed/create_guides.py:41"),
        ("prior.min_attention_pixels", 25, f"{WS} src/seed/create_guides.py:139"),
        ("prior.drop_thin_blobs", True, f"{WS} src/seed/create_guides.py:163"),
        ("prior.isolated", "blob", f"{WS} src/seed/create_guides.py:106-114"),
        ("prior.input_size", [224, 224], f"{WS} src/seed/seed_dataset.py:130"),
        ("prior.attention_resize", "nearest", f"{WS} src/seed/create_network_attention.py:94"),
        ("prior.attention.layer", "backbone.features.42", f"{WS} config.py:50"),
        ("prior.attention.normalize", "minmax", f"{WS} config.py:55"),
        ("prior.crf", {"iters": 10, "gaussian_sxy": 3, "gaussian_compat": 3, "bilateral_sxy": 80,
                       "bilateral_srgb": 13, "bilateral_compat": 10}, f"{WS} util/apply_dense_crf.py:13, :44, :48"),
    ]),
    "wsss_voc": ("train", [
        ("data.prior", "cam_saliency", f"{WS} main.py:53-56 (guides), :60-63 (DeepLab on them)"),
        ("data.batch_size", 4, f"{WS} config.py:62"),
        ("data.train_transform.crop_size", 321, f"{WS} config.py:67"),
        ("data.train_transform.scale", [0.5, 1.6], f"{WS} src/segment/datasets.py:74"),
        ("data.train_transform.hflip", True, f"{WS} config.py:70"),
        ("model.gt_fraction", 0.0, f"{WS} config.py:72"),
        ("model.net.backbone", "resnet101", f"{WS} src/segment/train_deeplabv3.py:122"),
        ("model.optimizer._target_", "torch.optim.SGD", f"{WS} src/segment/train_deeplabv3.py:151"),
        ("model.optimizer.lr", 2.5e-3, f"{WS} config.py:63 x 10: src/segment/train_deeplabv3.py:152"),
        ("model.backbone_lr_scale", 0.1, f"{WS} src/segment/train_deeplabv3.py:151-152"),
        ("model.optimizer.momentum", 0.9, f"{WS} config.py:68"),
        ("model.optimizer.weight_decay", 5e-4, f"{WS} config.py:66"),
        ("model.poly_power", 0.9, f"{WS} config.py:69"),
        ("model.test_crf.gt_prob", 0.9, f"{WS} config.py:74-75"),
        ("trainer.max_steps", 2000, f"{WS} config.py:64"),
    ]),
}
PAPER_DIR = ROOT / "conf" / "experiment" / "paper"


def test_every_recipe_has_a_table() -> None:
    assert sorted(p.stem for p in PAPER_DIR.glob("*.yaml")) == sorted(RECIPES)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_resolves_to_the_original(name: str, tmp_path: Path) -> None:
    config_name, table = RECIPES[name]
    cfg = compose_config(config_name, [f"experiment=paper/{name}"], tmp_path)
    wrong = []
    for key, value, source in table:
        got = OmegaConf.select(cfg, key, default="<missing>")
        got = OmegaConf.to_container(got, resolve=True) if OmegaConf.is_config(got) else got
        if got != value and not (isinstance(value, float) and got == pytest.approx(value)):
            wrong.append(f"{key} = {got!r}, the original's {value!r} ({source})")
    assert not wrong, f"paper/{name} drifts from the original:\n" + "\n".join(wrong)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_cites_its_values(name: str) -> None:
    """Every value line of a recipe carries its source (a comment), and the header names the commit."""
    text = (PAPER_DIR / f"{name}.yaml").read_text()
    assert "@" in text.split("defaults:")[0], f"paper/{name}: the header names no repo @ commit"
    body = text.split("defaults:", 1)[1].splitlines()
    bare = [line for line in body if ":" in line and not line.rstrip().endswith(":")
            and "#" not in line and not line.strip().startswith(("- ", "_target_", "tags"))]
    assert not bare, f"paper/{name}: values without a source comment: {bare}"


# --- the pieces the recipes need -------------------------------------------------------------------


def test_center_crop_and_vflip_train_transform() -> None:
    from usgs.data.transforms import EvalTransform, TrainTransform

    image = np.arange(20 * 30 * 3, dtype=np.uint32).reshape(20, 30, 3).astype(np.uint8)
    mask = np.tile(np.arange(30, dtype=np.uint8), (20, 1))
    out = TrainTransform(crop_size=(10, 12), scale=(1.0, 1.0), hflip=False, center_crop=True)(
        {"image": image, "mask": mask})
    assert np.array_equal(out["mask"], mask[5:15, 9:21])  # exactly the centre, every call
    flipped = {tuple(TrainTransform(crop_size=(20, 30), scale=(1.0, 1.0), hflip=False, vflip=True,
                                    center_crop=True)({"image": image, "mask": np.arange(20, dtype=np.uint8)[:, None]
                                                       .repeat(30, 1)})["mask"][:, 0]) for _ in range(20)}
    assert flipped == {tuple(range(20)), tuple(range(19, -1, -1))}
    # eval: centre crop at native size, padded with ignore where the image is smaller
    out = EvalTransform(crop=24)({"image": image, "mask": mask})
    assert out["mask"].shape == (24, 24) and (out["mask"][:2] == 255).all()
    assert np.array_equal(out["mask"][2:22], mask[:, 3:27])
    with pytest.raises(ValueError, match="exclude"):
        TrainTransform(crop_size=8, center_crop=True, resized_crop=True)
    resized = TrainTransform(crop_size=(10, 15), hflip=False, resize=True)({"image": image, "mask": mask})
    assert resized["mask"].shape == (10, 15) and np.array_equal(resized["mask"], mask[::2, ::2])


def test_supervised_loss_module_replaces_cross_entropy() -> None:
    from usgs.methods.losses import DiceLoss
    from usgs.methods.supervised import SupervisedSegmentation

    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 4, 1)
    batch = {"image": torch.randn(2, 3, 8, 8), "mask": torch.randint(0, 4, (2, 8, 8))}
    dice = SupervisedSegmentation(net, 4, loss=DiceLoss())
    dice.log = lambda *a, **k: None  # type: ignore[method-assign]
    expected = DiceLoss()(net(batch["image"]), batch["mask"])
    assert torch.allclose(dice.training_step(batch, 0), expected)
    ce = SupervisedSegmentation(net, 4)
    ce.log = lambda *a, **k: None  # type: ignore[method-assign]
    assert not torch.allclose(ce.training_step(batch, 0), expected)
    with pytest.raises(ValueError, match="class_weights"):
        SupervisedSegmentation(net, 4, loss=DiceLoss(), class_weights=[1, 1, 1, 2])


def test_subset_miou_is_the_mean_over_the_subset() -> None:
    from usgs.methods.supervised import SupervisedSegmentation

    module = SupervisedSegmentation(torch.nn.Conv2d(3, 3, 1), 3, subset_classes=[0, 1])
    logged: dict[str, float] = {}
    module.log = lambda key, value, **k: logged.__setitem__(key, value)  # type: ignore[method-assign]
    target = torch.tensor([[[0, 0, 1, 2]]])
    pred = torch.nn.functional.one_hot(torch.tensor([[[0, 1, 1, 2]]]), 3).permute(0, 3, 1, 2).float()
    module.test_metric.update(pred, target)
    module.on_test_epoch_end()
    # IoU: class 0 = 1/2, class 1 = 1/2, class 2 = 1
    assert logged["test/miou"] == pytest.approx(2 / 3)
    assert logged["test/miou_subset"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="subset_classes"):
        SupervisedSegmentation(torch.nn.Conv2d(3, 3, 1), 3, subset_classes=[3])


def test_vaihingen_crops_per_epoch() -> None:
    sample = SHARED_DATA / "vaihingen_sample"
    if not sample.is_dir():
        pytest.skip(f"no Vaihingen sample at {sample}")
    from usgs.data.vaihingen import VaihingenDataModule

    dm = VaihingenDataModule(root=str(sample), num_classes=6, ignore_clutter=False, train_tiles=[1], weak_tiles=[1],
                             val_tiles=[1], test_tiles=[1], crop_size=32, crops_per_epoch=7, gt="eroded",
                             batch_size=2, num_workers=0, train_transform=None)
    assert len(dm.dataset("train")) == 7
    with pytest.raises(ValueError, match="crops_per_epoch"):
        VaihingenDataModule(root=str(sample), crops_per_epoch=0, num_classes=5, batch_size=2, num_workers=0)
