#!/usr/bin/env bash
# Every method on real data at the paper's resolution on one GPU (issue 15, item 3), then one table.
#
#   OUT=<folder> bash bench/gpu_results.sh            # GPU run: bf16 autocast (trainer=gpu), <= 10 min on one H200
#   bash bench/gpu_results.sh --dry-run               # CPU check of the same commands: one batch per method
#   bash bench/gpu_results.sh [--dry-run] --print     # print the commands, run nothing (tests compose them)
#   OUT=<folder> STEPS=20 bash bench/gpu_results.sh --recipes   # the papers' recipes instead: STEPS optimiser
#       steps each at the true batch on stand-in data (bench/recipe_dryrun.py --device gpu), s/step, peak
#       GPU memory, FLOPs, H200 hours -> $OUT/recipe_dryrun.jsonl + .md (--dry-run: 2 CPU steps at batch 2)
#
# Writes into ${OUT:-logs/gpu_results} (at most 8 files, as the device tool brings back):
#   throughput.md/.json (bench/throughput.py), gpu_results.md/.json (bench/gpu_tables.py), gpu_results.log.
# Run directories go to ${RUNS:-logs/gpu_results_runs} (dry run: logs/gpu_dry_run), priors to $RUNS/priors.
# Data: $USGS_DATA_DIR, else ../shared/data; USGS_DATA_ARCHIVE=<file.tar.gz> (a carried copy, see
# BENCHMARKS.md) is unpacked first. Python: $PYTHON, else .venv/bin/python, else python3;
# USGS_WHEELS=<folder> installs the carried wheels there first (the device image lacks hydra & co.).
# ONLY="weak_deeplab supervised" runs those steps alone (names as in the table; throughput and tables always run).
# SEEDS="0 1 2" repeats every training run per seed (the table then gives mean ± std); default one seed.
#
# Resolution and networks (paper settings where Stanford Background allows them): Stanford images are
# ~320x240, so the papers' 321 px (DeepLab, single-stage) and 473 px (PSPNet) crops would be mostly
# padding; every Stanford method trains on 224 px crops of images rescaled x0.5-2 (MaskContrast's own
# 224 px RandomResizedCrop) and is evaluated on whole images resized to 240x320 (4:3). Backbones:
# ResNet-50 as the papers (MaskContrast, DeepLab, PSPNet/ClusterNet, single-stage, classifier); the
# image-level chain's classifier is the seed's VGG16-BN at 224x224 (its Grad-CAM input size); twins
# keep the seed's network (conf/model/twins.yaml, ResNet-18) at 224 px. Random init everywhere: the *_stanford
# experiments' own ImageNet EfficientNet-Lite0 start is overridden (its PyPI package is not carried).
#
# Budget estimate for one H200, one seed (conservative: 200 images/s for a ResNet-50 OS 8 training
# step in bf16, bench/throughput.py measures the real figure first; ~20 s of start-up per process:
# imports, 8 loader workers, final test; priors on the CPU cores):
#   throughput 4 settings x 25 steps x 32 images                  ~  40 s
#   maskcontrast  saliency_unsup prior ~60 s + 20 epochs x 429    ~ 120 s, k-means + linear probe ~ 60 s
#   twins         k-means prior ~20 s + 10 epochs, two ResNet-18  ~  50 s
#   clusternet / pspnet   10 epochs each                          ~  90 s
#   classifier, single_stage   10 epochs each                     ~  80 s
#   weak_deeplab  VGG classifier 10 epochs + CAM prior + 10 epochs ~  80 s
#   supervised (Stanford) 10 epochs, saliency_weizmann 20 epochs  ~  60 s
#   total                                                         ~ 580 s (< 10 min); validation only at
#   the end of training (the tables report test), so best.ckpt = last.ckpt here.
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=0 PRINT=0 RECIPES=0
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    --print) PRINT=1 ;;
    --recipes) RECIPES=1 ;;
    *) echo "usage: $0 [--dry-run] [--print] [--recipes]" >&2; exit 2 ;;
  esac
done

export NO_ALBUMENTATIONS_UPDATE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON; elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi

if [[ $DRY == 1 ]]; then
  OUT=${OUT:-logs/gpu_dry_run/tables}; RUNS=${RUNS:-logs/gpu_dry_run}
else
  OUT=${OUT:-logs/gpu_results}; RUNS=${RUNS:-logs/gpu_results_runs}
fi
if [[ $PRINT == 0 && -n "${USGS_WHEELS:-}" ]]; then
  "$PY" -m pip install --quiet --no-index --find-links "$USGS_WHEELS" "$USGS_WHEELS"/*
fi
if [[ $PRINT == 0 && -n "${USGS_DATA_ARCHIVE:-}" ]]; then
  mkdir -p "$RUNS/data" && tar xzf "$USGS_DATA_ARCHIVE" -C "$RUNS/data"
  export USGS_DATA_DIR="$PWD/$RUNS/data"
fi
DATA_DIR=${USGS_DATA_DIR:-../shared/data}
SEEDS=${SEEDS:-0}
if [[ $PRINT == 0 ]]; then
  mkdir -p "$OUT" "$RUNS"
  : > "$RUNS/timings.tsv"
  exec > >(tee -a "$OUT/gpu_results.log") 2>&1
fi

# channels_last weights (usgs.callbacks.ChannelsLast): cuDNN's fast bf16 convolutions; on in the dry
# run too, so that the CPU run goes through the same memory layout.
COMMON=(logger=csv "paths.data_dir=$DATA_DIR" "paths.priors_dir=$RUNS/priors"
        +callbacks.channels_last._target_=usgs.callbacks.ChannelsLast)
if [[ $DRY == 1 ]]; then
  # One batch of 2 tiny images per stage; a checkpoint is still written (fast_dev_run writes none,
  # and evaluate.py and the weak chain need one). The priors run on whole images (their own sizes).
  ONE_BATCH=(trainer=cpu trainer.max_epochs=1 trainer.limit_train_batches=1 trainer.limit_val_batches=1
             trainer.limit_test_batches=1 trainer.check_val_every_n_epoch=1)
  MODE=("${ONE_BATCH[@]}" data.num_workers=0 data.persistent_workers=false data.pin_memory=false
        data.batch_size=2 data.eval_batch_size=2 data.train_transform.crop_size=32 "data.eval_transform.size=[32,32]")
  EVAL_MODE=(device=cpu max_train_images=4 max_eval_images=4 progress=false)
  THROUGHPUT=(--device cpu --steps 2 --batch 2 --warmup 1 --crop 64 --backbone resnet18)
  ONE=(prior_model_overrides='["data=stanford","trainer=cpu","trainer.max_epochs=1","trainer.limit_train_batches=1","trainer.limit_val_batches=1"]'
       prior_overrides='["prior.saliency=saliency_unsup","prior.input_size=[32,32]"]')
else
  # bf16 autocast (conf/trainer/gpu.yaml), 8 loader workers with pinned memory, validation at the end.
  MODE=(trainer=gpu data.num_workers=8 data.persistent_workers=true data.pin_memory=true)
  EVAL_MODE=(device=cuda)
  THROUGHPUT=(--device cuda --batch 32 --crop 224 --steps 20 --warmup 5 --backbone resnet50)
  ONE=(prior_model_overrides='["data=stanford","trainer=gpu","trainer.max_epochs=10","trainer.check_val_every_n_epoch=10"]'
       prior_overrides='["prior.saliency=saliency_unsup"]')
fi
STANFORD_EVAL=("data.eval_transform.size=[240,320]" data.eval_batch_size=16)
CROP224=(data.train_transform.crop_size=224 "data.train_transform.scale=[0.5,2.0]")
R50=(model.net.backbone=resnet50 model.net.weights=null)  # random init (the experiments' default: ImageNet Lite0)

wanted() {  # wanted NAME: not excluded by ONLY
  [[ -z "${ONLY:-}" || " throughput tables $ONLY " == *" ${1%%/*} "* ]]
}

step() {  # step NAME COMMAND...: run, time, remember the wall seconds
  local name=$1; shift
  wanted "$name" || return 0
  if [[ $PRINT == 1 ]]; then printf '%q ' "$@"; echo; return 0; fi
  echo "=== $name: $*"
  local start=$SECONDS
  "$@"
  printf '%s\t%s\n' "$name" "$((SECONDS - start))" >> "$RUNS/timings.tsv"
}

train() {  # train NAME SEED EPOCHS OVERRIDES...: train.py into $RUNS/NAME/seed_SEED
  local name=$1 seed=$2 epochs=$3; shift 3
  wanted "$name" || return 0
  local budget=(trainer.max_epochs="$epochs" trainer.check_val_every_n_epoch="$epochs")
  [[ $PRINT == 1 ]] || rm -rf "${RUNS:?}/$name/seed_$seed"  # a fresh run (a stale prior_model/ would be reused)
  step "$name/seed_$seed" "$PY" train.py "$@" "${COMMON[@]}" "${budget[@]}" "${MODE[@]}" seed="$seed" \
    "hydra.run.dir=$RUNS/$name/seed_$seed"
}

if [[ $RECIPES == 1 ]]; then
  # conf/experiment/paper/* at their true crop, batch, backbone and output stride, random weights, on
  # stand-ins in each dataset's real layout (usgs/data/standin.py); one process per recipe, resumable.
  if [[ $DRY == 1 ]]; then RD=(--device cpu --steps 2 --max-batch 2); else RD=(--device gpu --steps "${STEPS:-20}" --max-batch 0); fi
  step recipes "$PY" bench/recipe_dryrun.py "${RD[@]}" --out "$OUT/recipe_dryrun.jsonl"
  exit 0
fi

step throughput "$PY" bench/throughput.py "${THROUGHPUT[@]}" --out "$OUT"

for seed in $SEEDS; do
  # MaskContrast (Van Gansbeke et al. 2021): ResNet-50 OS 8, 224 px RandomResizedCrop, batch 32.
  train maskcontrast "$seed" 20 experiment=maskcontrast_stanford "${R50[@]}" \
    model.net.head_channels=256 data.train_transform.crop_size=224 data.batch_size=32 "${STANFORD_EVAL[@]}"
  for task in kmeans linear_probe; do
    step "maskcontrast_$task/seed_$seed" "$PY" evaluate.py task=$task split=test \
      "ckpt_path=$RUNS/maskcontrast/seed_$seed/checkpoints/last.ckpt" "paths.data_dir=$DATA_DIR" \
      "${EVAL_MODE[@]}" "hydra.run.dir=$RUNS/maskcontrast_$task/seed_$seed"
  done
  # Twins on the k-means prior: the seed's network and epochs (10), 224 px crops.
  train twins "$seed" 10 experiment=twins_stanford model.net.backbone=resnet18 model.net.weights=null \
    data.train_transform.crop_size=224 "${STANFORD_EVAL[@]}"
  # ClusterNet and plain PSPNet at the same budget: ResNet-50 OS 8 (deep stem), full epochs.
  for name in clusternet pspnet; do
    train $name "$seed" 10 experiment=${name}_stanford "${R50[@]}" trainer.limit_train_batches=1.0 \
      "${CROP224[@]}" data.batch_size=16 "${STANFORD_EVAL[@]}"
  done
  # Image-level supervision: classifier (ResNet-50, OS 16) and single stage (ResNet-50, paper: 5 of 20 pretrain epochs).
  train classifier "$seed" 10 experiment=classifier_stanford model.backbone.name=resnet50 model.backbone.weights=null \
    "${CROP224[@]}" data.batch_size=32 "${STANFORD_EVAL[@]}"
  train single_stage "$seed" 10 experiment=single_stage_stanford "${R50[@]}" model.net.channels=256 \
    model.pretrain_epochs=3 "${CROP224[@]}" data.batch_size=16 "${STANFORD_EVAL[@]}"
  # The chain in one command (README): VGG16-BN classifier -> Grad-CAM + saliency pseudo labels -> DeepLab.
  # Stanford has no saliency of its own: the saliency_unsup cache that MaskContrast's run made above.
  # Pseudo labels of an earlier classifier at the same checkpoint path would be reused: drop them.
  if [[ $PRINT == 0 ]] && wanted weak_deeplab; then rm -rf "$RUNS"/priors/stanford/*/cam_saliency-*; fi
  train weak_deeplab "$seed" 10 experiment=weak_deeplab_stanford "${R50[@]}" \
    model.net.head_channels=256 "${CROP224[@]}" data.batch_size=16 "${STANFORD_EVAL[@]}" "${ONE[@]}"
  # Full supervision at the same budget (the weak chain's upper bound): DeepLabV3 ResNet-50 OS 8.
  train supervised "$seed" 10 experiment=supervised data=stanford model.net.backbone=resnet50 "${CROP224[@]}" \
    data.batch_size=16 "${STANFORD_EVAL[@]}"
  # The saliency network of prior=saliency_sup: Weizmann Horse at the prior's own 128 px.
  train saliency_weizmann "$seed" 20 experiment=saliency_weizmann "${R50[@]}" data.batch_size=32 \
    data.eval_batch_size=16
done

step tables "$PY" bench/gpu_tables.py "$RUNS" --out "$OUT"
[[ $PRINT == 1 ]] || echo "tables: $OUT/gpu_results.md $OUT/throughput.md"
